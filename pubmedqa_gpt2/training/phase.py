"""What a training phase reads and writes: phase 2 is the `train` stage (PQA-L), phase 1 the
`pretrain` stage (PQA-A). The same recipe trains both (`recipe.py`)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from pubmedqa_gpt2.core import paths
from pubmedqa_gpt2.core.config import Params


@dataclass(frozen=True)
class Phase:
    """One training phase's files; its settings are `params.train` (see `pretrain_params`)."""

    section: str  # the params.yaml section its settings come from, for messages
    module: str  # the stage's module, relaunched under torch.distributed.run
    data: str  # what it trains on, for the model card
    train_file: Path
    output: Path
    checkpoints: Path
    dvclive: Path
    metrics_file: Path
    perf_file: Path
    max_examples: int | None = None  # train on the first N examples of train_file
    start_from: Path | None = None  # a saved model to start from; None: the base model

    @property
    def running_file(self) -> Path:
        """Written while the phase trains; left behind if it is killed."""
        return self.checkpoints / "running.json"


TRAIN_PHASE = Phase(
    section="train",
    module="stages.train",
    data="PQA-L",
    train_file=paths.TRAIN_FILE,
    output=paths.FINETUNED,
    checkpoints=paths.CHECKPOINTS,
    dvclive=paths.DVCLIVE,
    metrics_file=paths.TRAIN_METRICS,
    perf_file=paths.TRAIN_PERF,
)

PRETRAIN_PHASE = Phase(
    section="pretrain",
    module="stages.pretrain",
    data="PQA-A, phase 1",
    train_file=paths.ARTIFICIAL_FILE,
    output=paths.PHASE1_MODEL,
    checkpoints=paths.PHASE1_CHECKPOINTS,
    dvclive=paths.PHASE1_DVCLIVE,
    metrics_file=paths.PRETRAIN_METRICS,
    perf_file=paths.PRETRAIN_PERF,
)


def train_phase(params: Params) -> Phase:
    """The train stage's phase: from phase 1's model when the pretrain stage ran."""
    return (
        replace(TRAIN_PHASE, start_from=PRETRAIN_PHASE.output)
        if params.pretrain.enabled
        else TRAIN_PHASE
    )


def pretrain_phase(params: Params) -> Phase:
    """The pretrain stage's phase: the first `pretrain.max_samples` PQA-A examples."""
    return replace(PRETRAIN_PHASE, max_examples=params.pretrain.max_samples)


def pretrain_params(params: Params) -> Params:
    """The params phase 1 trains with: section `pretrain`'s training settings as `train`."""
    return params.model_copy(update={"train": params.pretrain.training()})
