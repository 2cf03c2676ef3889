"""Training a causal LM on prepared PubMedQA examples with the Hugging Face Trainer.

`recipe.py` reads top-down (setup -> fit -> save) and uses the other modules: `examples`
(reading the splits, features), `collator`, `settings` (TrainingArguments), `checkpoints`
(fingerprints, resuming), `trainer` (the Trainer subclass), `callbacks`, `lora`, `saving`
(model card, outputs), `launch` (several processes), `crash` (a killed run's marker), `perf`.
"""
