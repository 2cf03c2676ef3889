#!/usr/bin/env bash
# The one-call GPU check (docs/PERFORMANCE.md, "The one-call GPU check"). On a lent GPU machine,
# with gpu-kit/ (`make gpu-kit`) carried beside the working tree:
#
#     PYTHONUNBUFFERED=1 bash gpu_check/run.sh /tmp/check --results "$OUT"
#
#     bash gpu_check/run.sh OUTDIR [--results DIR] [--tiny] [--budget SECONDS]
#
# Everything happens in gpu_check/check.py, run as a file: it installs the kit's wheels into
# OUTDIR/site before it imports anything of the project's (the GPU image lacks pydantic, dvc,
# ...). The budget (480 s by default) counts from this script's start. GPU_KIT names another
# kit folder; without one, the current Python's packages are used as they are.
set -euo pipefail

if [ $# -lt 1 ] || [ "${1#-}" != "$1" ]; then
    echo "usage: bash gpu_check/run.sh OUTDIR [--results DIR] [--tiny] [--budget SECONDS]" >&2
    exit 2
fi
root=$(cd "$(dirname "$0")/.." && pwd)
export GPU_CHECK_STARTED=${GPU_CHECK_STARTED:-$(date +%s.%N)}
export GPU_KIT=${GPU_KIT:-$root/gpu-kit} PYTHONUNBUFFERED=1
# Nothing is downloaded: fail at once instead of retrying a hub that is not there.
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec "${PYTHON:-python3}" "$root/gpu_check/check.py" "$@"
