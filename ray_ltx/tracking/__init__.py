"""Run tracking behind one interface (:class:`Tracker`): MLflow (the default) and Weights & Biases.

Train (the driver and rank 0), tune (the sweep's parent run) and generate (loading a LoRA from a
run or the model registry) talk only to this package; ``--report_to`` picks the implementation,
``none`` turns tracking off.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray_ltx.config import Config
from ray_ltx.redaction import Secret
from ray_ltx.tracking.base import RunInfo, Tracker, config_params, run_tags, versions

__all__ = ["RunInfo", "Tracker", "attach", "check", "config_params", "download", "enabled", "resume",
           "start", "versions"]


def _implementation(backend: str) -> type[Tracker]:
    if backend == "wandb":
        from ray_ltx.tracking.wandb_tracker import WandbTracker

        return WandbTracker
    from ray_ltx.tracking.mlflow_tracker import MlflowTracker

    return MlflowTracker


def enabled(config: Config) -> bool:
    return config.tracking.report_to != "none"


def check(config: Config) -> None:
    """Before any cluster or model work: the tracker answers (and takes our credentials)."""
    _implementation(config.tracking.report_to).check(config)


def start(config: Config, *, run_name: str | None = None, parent_run_id: str | None = None,
          extra_params: dict[str, Any] | None = None, tags: dict[str, str] | None = None) -> Tracker:
    """A new run holding the resolved config, package versions and ``extra_params`` as params."""
    params = {**config_params(config), **versions(), **{k: str(v) for k, v in (extra_params or {}).items()}}
    name = run_name or config.tracking.mlflow_run_name or Path(config.output_dir).name
    return _implementation(config.tracking.report_to).start(
        config, run_name=name, parent_run_id=parent_run_id, params=params, tags={**run_tags(config), **(tags or {})})


def resume(config: Config, run_id: str, extra_params: dict[str, Any] | None = None) -> Tracker | None:
    """The run ``run_id`` running again, or None if the tracker has no such run."""
    params = {**config_params(config), **versions(), **{k: str(v) for k, v in (extra_params or {}).items()}}
    return _implementation(config.tracking.report_to).resume(config, run_id, params)


def attach(handle: dict[str, Any]) -> Tracker:
    """In another process (training rank 0): the run of ``Tracker.handle()``."""
    return _implementation(handle["backend"]).attach(handle)


def download(uri: str, tracking_uri: str | Secret | None = None) -> str:
    """A local copy of weights a tracker holds: ``runs:/<run_id>/<path>`` or ``models:/<name>/<version|latest>``
    (MLflow's run artifacts and model registry)."""
    from ray_ltx.tracking.mlflow_tracker import download as mlflow_download

    return mlflow_download(uri, tracking_uri)
