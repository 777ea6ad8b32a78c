"""What the driver hands every training worker: one frozen, typed object instead of a dict of loose keys."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from ray_ltx.config import Config
from ray_ltx.faults import FaultPlan
from ray_ltx.train.data import DataPlan


@dataclass(frozen=True)
class WorkerSpec:
    """The run as the workers see it. Ray pickles it into every worker and keeps it in the Train run state (the
    dashboard shows it), so it holds no credentials: the tracking URI travels redacted in ``config`` and as a
    Secret inside ``tracking``."""

    config: dict[str, Any]  # Config.to_dict(), tracking URI redacted
    cache_dir: str
    latent_spec: dict[str, Any]  # the cache's LatentSpec.to_dict()
    plan: DataPlan  # which samples make each global step, at any world size
    plan_start_step: int  # the step the driver planned from (the newest checkpoint it saw)
    storage_dir: str  # this run's folder under storage_path: checkpoints, fatal.json
    scratch_dir: str  # a local folder for markers and spilled metrics (storage_dir when it is local)
    resume_path: str | None = None  # --resume_from_checkpoint <path>
    heldout_batches: list[Any] = field(default_factory=list)  # Batch objects for the held-out loss
    tracking: Any = None  # the tracker's handle: rank 0 reattaches to the run
    faults: FaultPlan = field(default_factory=FaultPlan)
    sample_log: str | None = None  # RAY_LTX_SAMPLE_LOG: a per-step record of the samples each rank trained
    journal: Any = None  # elastic.Journal actor handle: worker-group sizes and restarts
    interactive: bool = False  # the driver's stderr is a terminal: rank 0 draws a live bar there

    @cached_property
    def run_config(self) -> Config:
        return Config.from_dict(self.config)
