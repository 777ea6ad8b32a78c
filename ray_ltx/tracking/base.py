"""The tracker interface: one run in a tracking backend, as the driver, rank 0, a sweep and generate see it.

A :class:`Tracker` is bound to one run. The driver starts it (or reopens it on resume), hands its
:meth:`Tracker.handle` to rank 0, which reattaches in its own process to log per-step metrics and
validation videos, and ends it FINISHED, FAILED (with the error) or KILLED. Nothing outside
``ray_ltx/tracking/`` calls a tracking library.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ray_ltx.config import Config
from ray_ltx.redaction import SECRET_NAMES, redact


@dataclass
class RunInfo:
    """Another run of the same backend, as a sweep lists its trials' runs."""

    run_id: str
    name: str
    status: str  # RUNNING, FINISHED, FAILED or KILLED
    start_time: int = 0
    tags: dict[str, str] = field(default_factory=dict)


class Tracker(ABC):
    """One run of a tracking backend: lifecycle, params, buffered metrics, artifacts, media, models."""

    #: the ``--report_to`` value
    backend: ClassVar[str]
    #: what users call the backend in messages ("MLflow", "W&B")
    title: ClassVar[str]

    def __init__(self, run_id: str):
        self.run_id = run_id

    # -- the backend --------------------------------------------------------------------------------

    @classmethod
    @abstractmethod
    def check(cls, config: Config) -> None:
        """Fail fast (a :class:`~ray_ltx.errors.TrackingError`), before any training, when the backend is unusable."""

    @classmethod
    @abstractmethod
    def start(cls, config: Config, *, run_name: str, parent_run_id: str | None, params: dict[str, str],
              tags: dict[str, str]) -> Tracker:
        """A new run holding ``params`` and ``tags``, nested under ``parent_run_id`` when given."""

    @classmethod
    @abstractmethod
    def resume(cls, config: Config, run_id: str, params: dict[str, str]) -> Tracker | None:
        """The run ``run_id`` running again (a resumed training, a resumed sweep), or None if the backend has no
        such run. ``params`` are the resumed run's: those the run did not hold yet are added."""

    @classmethod
    @abstractmethod
    def attach(cls, handle: dict[str, Any]) -> Tracker:
        """The run of :meth:`handle`, in another process (training rank 0)."""

    @abstractmethod
    def handle(self) -> dict[str, Any]:
        """What another process needs to reattach to this run; credentials only as a :class:`Secret`."""

    @abstractmethod
    def describe(self) -> str:
        """Where the run is, for log lines and the summary (credentials masked)."""

    def available(self, wait_s: float) -> bool:  # noqa: ARG002 - a local backend is always there
        """Whether the backend answers within ``wait_s``: the end of a run asks before it logs."""
        return True

    # -- the run ------------------------------------------------------------------------------------

    @abstractmethod
    def set_tags(self, tags: dict[str, str]) -> None: ...

    @abstractmethod
    def delete_tag(self, key: str) -> None: ...

    @abstractmethod
    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        """Buffered: metrics leave this process in batches, retried until the backend takes them."""

    @abstractmethod
    def flush(self, attempts: int = 1) -> bool:
        """Send what is buffered; whether nothing is left."""

    @abstractmethod
    def log_artifact(self, path: Path, artifact_dir: str = "") -> None:
        """A file or a folder's files under ``artifact_dir`` of the run (``""``: its root)."""

    @abstractmethod
    def log_dict(self, data: dict[str, Any] | list[Any], artifact_file: str) -> None: ...

    @abstractmethod
    def log_text(self, text: str, artifact_file: str) -> None: ...

    def log_table(self, rows: list[dict[str, Any]], artifact_file: str) -> None:
        """Rows as a table (columns: every key of any row)."""
        columns: dict[str, list[Any]] = {}
        for row in rows:
            for key in row:
                columns.setdefault(key, [])
        for row in rows:
            for key in columns:
                columns[key].append(row.get(key))
        self._log_columns(columns, artifact_file)

    @abstractmethod
    def _log_columns(self, columns: dict[str, list[Any]], artifact_file: str) -> None: ...

    @abstractmethod
    def log_video(self, step: int, key: str, video: Path, caption: str) -> None:
        """A validation video of ``step`` and a preview the run's page shows at that step."""

    @abstractmethod
    def log_model(self, path: Path, artifact_dir: str, registered_name: str | None) -> str | None:
        """The final weights (a file or a folder) as the run's model; with ``registered_name``, also a new version
        of that model in the backend's registry. Returns where the registered version can be loaded from."""

    @abstractmethod
    def end(self, status: str, error: str | None = None) -> None:
        """status: FINISHED, FAILED or KILLED (each backend maps them onto its own states); a failure's message is
        kept with the run."""

    def close(self, spill_dir: Path | None = None) -> None:  # noqa: B027 - optional for backends without buffers
        """This process is done with the run (rank 0 at the end of training): send everything still buffered."""

    @abstractmethod
    def recovery_hint(self, weights: str, artifact_dir: str) -> str:
        """Commands that log ``weights`` and end the run once the backend is back (after :meth:`available` said no)."""

    # -- sweeps -------------------------------------------------------------------------------------

    @abstractmethod
    def children(self) -> list[RunInfo]:
        """The runs nested under this one (a sweep's trials)."""

    @abstractmethod
    def child(self, run_id: str) -> Tracker:
        """Another run of the same backend (a trial's, found through :meth:`children`)."""


def config_params(config: Config, max_length: int = 6000) -> dict[str, str]:
    """The resolved config as flat params, credentials masked and settings named like secrets left out (6000
    characters: MLflow's limit on a param value)."""
    return {key: redact(value)[:max_length] for key, value in config.flatten().items() if not SECRET_NAMES.search(key)}


def versions() -> dict[str, str]:
    import importlib.metadata as metadata

    out = {}
    for package in ("ray-ltx", "torch", "diffusers", "transformers", "peft", "deepspeed", "ray", "mlflow", "wandb"):
        try:
            out[f"version.{package}"] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[f"version.{package}"] = "not installed"
    return out


def ray_job_id() -> str | None:
    """The submission id of the Ray job this driver runs in (`ray job submit`), if any."""
    from ray_ltx.cluster import job_config

    job_id = os.environ.get("RAY_JOB_SUBMISSION_ID") or (job_config().get("metadata") or {}).get("job_submission_id")
    return job_id or os.environ.get("RAY_JOB_ID") or None


def run_tags(config: Config) -> dict[str, str]:
    """The tags every ray-ltx run carries."""
    tags = {"training_type": config.training.training_type,
            "model_id": redact(config.model.pretrained_model_name_or_path),
            "ray_ltx.output_dir": redact(config.output_dir)}
    job_id = ray_job_id()
    if job_id:
        tags["ray_job_id"] = job_id
    return tags
