"""Fine-tune GPT-2 on PubMedQA: the library the DVC stages (`stages/`) and the CLI call.

Layers, highest first (a module imports only from its own layer's module or lower ones; a
test holds this): `cli` > `training`, `evaluation`, `summary`, `smoke_params` > `model`,
`data` > `config`, `prompt`, `devices`, `memory` > `errors`, `io`, `paths`.
"""
