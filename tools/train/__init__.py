"""`karma train`: continual DPO on the preferences topic for one model of the pool, exactly once
across crashes; each round a new checkpoint version, published on karma.checkpoints.

- dpo.py: one DPO round with TRL's DPOTrainer (`train_round`, `DpoSettings`); torch, no Kafka.
- rounds.py: which preferences a round takes (`PreferenceFilter`, `RoundBuilder`), the versions
  on disk (`VersionStore`) and where a trainer resumes (`resume`); no Kafka, no torch.
- runner.py: the Kafka loop (`run_trainer`).
"""

from __future__ import annotations

from karma.tools.train.dpo import DpoSettings, RoundResult, TrainError, train_round
from karma.tools.train.rounds import PreferenceFilter, RoundBuilder, VersionStore, resume
from karma.tools.train.runner import TrainOptions, TrainResult, run_trainer

__all__ = [
    "DpoSettings",
    "PreferenceFilter",
    "RoundBuilder",
    "RoundResult",
    "TrainError",
    "TrainOptions",
    "TrainResult",
    "VersionStore",
    "resume",
    "run_trainer",
    "train_round",
]
