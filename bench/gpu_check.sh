#!/usr/bin/env bash
# The one-call GPU check (docs/PERFORMANCE.md, "The one-call GPU check"):
#
#     bash bench/gpu_check.sh OUTDIR [--tiny] [--budget SECONDS]
#
# On a bare, offline GPU machine: the packages it lacks are installed from gpu-kit/wheels
# (`make gpu-kit` on a machine with PyPI) into OUTDIR/site, the data and tokenizer are taken
# from gpu-kit/ unless PUBMEDQA_DIR / GPT2_TOKENIZER_DIR say otherwise, then
# `python -m bench.gpu_check` runs every stage of dvc.yaml and bench.gpu. Without a kit
# (GPU_KIT names another folder), the current Python's packages are used as they are.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
kit=${GPU_KIT:-$root/gpu-kit}
python=${PYTHON:-python3}
if [ $# -lt 1 ] || [ "${1#-}" != "$1" ]; then
    echo "usage: bash bench/gpu_check.sh OUTDIR [--tiny] [--budget SECONDS]" >&2
    exit 2
fi
mkdir -p "$1/logs"
out=$(cd "$1" && pwd)
shift

pythonpath=$root
if [ -d "$kit/wheels" ]; then
    echo "gpu_check: installing $(wc -l < "$kit/requirements.txt") pinned packages from $kit/wheels"
    "$python" -m pip install --quiet --no-index --no-deps --target "$out/site" \
        --find-links "$kit/wheels" -r "$kit/requirements.txt" >"$out/logs/install.log" 2>&1 || {
        echo "gpu_check: installing the kit failed; see $out/logs/install.log" >&2
        tail -n 5 "$out/logs/install.log" >&2
        exit 1
    }
    pythonpath=$root:$out/site
    export PUBMEDQA_DIR=${PUBMEDQA_DIR:-$kit/pubmedqa}
    export GPT2_TOKENIZER_DIR=${GPT2_TOKENIZER_DIR:-$kit/gpt2-tokenizer}
fi
# Nothing is downloaded: fail at once instead of retrying a hub that is not there.
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH=$pythonpath${PYTHONPATH:+:$PYTHONPATH}

# Every module the stages import, before minutes of work depend on them.
"$python" - <<'EOF'
import importlib, sys
missing = []
for name in ("torch", "transformers", "accelerate", "peft", "safetensors", "pyarrow", "sklearn",
             "scipy", "sacrebleu", "yaml", "pydantic", "ruamel.yaml", "dvclive", "nltk",
             "rouge_score"):
    try:
        importlib.import_module(name)
    except Exception as exc:  # an import that fails for any reason is reported, by name
        missing.append(f"{name} ({type(exc).__name__}: {exc})")
if missing:
    sys.exit("gpu_check: cannot import " + "; ".join(missing) + " (make gpu-kit builds the wheels)")
EOF
exec "$python" -m bench.gpu_check "$out" "$@"
