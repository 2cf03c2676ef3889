"""Memory: what training needs before it starts, and what to change when it runs out.

Full fine-tuning with AdamW keeps, per parameter, fp32 weights (4 bytes) and, per trained
parameter, an fp32 gradient (4) and AdamW's two moments (8): 16 bytes a trained parameter,
12.4 GB for GPT-2 Large before any activation. LoRA trains few parameters, so it needs little
more than the frozen weights. A CUDA out-of-memory error in train or evaluate becomes one line
that says what was asked for, what was free, and what to change.
"""

from __future__ import annotations

import re
from pathlib import Path

from pubmedqa_gpt2.core.errors import StageError


def train_advice(section: str = "train") -> str:
    """What to change when training runs out of memory: the knobs of the phase's params
    section (`train`, or `pretrain` for phase 1)."""
    return (
        f"lower {section}.batch_size and raise {section}.gradient_accumulation_steps by the same "
        f"factor, set {section}.gradient_checkpointing: true, set {section}.lora.enabled: true, "
        "or lower prepare.max_length"
    )


# The evaluate stage's own knobs; training's do not apply there.
EVALUATE_ADVICE = (
    "lower evaluate.batch_size and evaluate.generation_batch_size, or prepare.max_length"
)
_ASKED = re.compile(r"Tried to allocate ([\d.]+ [KMGT]?i?B)")
_FREE = re.compile(r"total capacity of ([\d.]+ [KMGT]?i?B) of which ([\d.]+ [KMGT]?i?B) is free")


def training_state_bytes(total: int, trained: int) -> int:
    """Weights (fp32, every parameter) + gradients and AdamW moments (fp32, trained ones)."""
    return 4 * total + 12 * trained


def available_cpu_bytes(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    """MemAvailable of this Linux machine, or None where it cannot be read."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB"


def memory_line(total: int, trained: int, gpu_capacity: int | None, section: str = "train") -> str:
    """What the weights, gradients and AdamW state need, against the GPU's memory (a
    StageError when they do not fit: no batch size makes them fit, LoRA does, set in the
    phase's params `section`) or, on a CPU (`gpu_capacity` None), against the machine's
    available memory (said, not enforced)."""
    need = training_state_bytes(total, trained)
    what = (
        f"weights, gradients and AdamW state need {gb(need)} ({total:,} parameters, "
        f"{trained:,} trained), before activations"
    )
    if gpu_capacity is None:
        available = available_cpu_bytes()
        return what + (f"; {gb(available)} available on this machine" if available else "")
    if need > gpu_capacity:
        raise StageError(
            f"{what}, more than the GPU's {gb(gpu_capacity)}: set {section}.lora.enabled: true "
            "(it trains few parameters), or use a GPU with more memory"
        )
    return f"{what}; the GPU has {gb(gpu_capacity)}"


def out_of_memory_message(error: BaseException, advice: str) -> str:
    """One line for a CUDA out-of-memory error: what was asked for and free, what to change."""
    text = str(error)
    parts = ["CUDA out of memory"]
    asked, free = _ASKED.search(text), _FREE.search(text)
    if asked:
        parts.append(f"tried to allocate {asked.group(1)}")
    if free:
        parts.append(f"{free.group(2)} free of {free.group(1)}")
    return f"{', '.join(parts)}; to fit: {advice}"


def killed_message(advice: str) -> str:
    return (
        "killed by signal 9: probably out of memory (the kernel's out-of-memory killer sends "
        f"it); to fit: {advice}"
    )
