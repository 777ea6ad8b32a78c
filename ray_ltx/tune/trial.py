"""One trial of a sweep: a full ray-ltx training with the trial's values. Runs in a Tune trial actor.

Each trial trains into ``<output_dir>/trials/<trial_id>`` with its own TorchTrainer, on the latent
cache the sweep's driver built. Its workers' reports that carry the sweep's metric become Tune
results (what ASHA and Optuna see). When training returns, the trial writes ``trial_result.json``
beside its outputs: the driver reads it to tell a trial that trained to the end from one that Tune
stopped.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from ray.tune.integration.ray_train import TuneReportCallback

from ray_ltx import storage
from ray_ltx.config import Config
from ray_ltx.logs import setup_logging
from ray_ltx.tune.spec import Dimension, apply_params

log = logging.getLogger(__name__)

TRIAL_RESULT = "trial_result.json"  # in each trial's output_dir: what its train() returned


def trial_dir(output_dir: str, trial_id: str) -> str:
    return storage.join(output_dir, "trials", trial_id)


def trial_config(base: dict[str, Any], params: dict[str, Any], ties: list[Dimension], *, trial_id: str,
                 sweep_name: str) -> Config:
    """The config one trial trains with: its own output_dir and Train run, the sweep's shared cache."""
    data = apply_params(base, params, ties)
    data["output_dir"] = trial_dir(base["output_dir"], trial_id)
    data["data"]["cache_dir"] = base["data"]["cache_dir"]
    data["data"]["data_root"] = None  # the cache is built (once) by the sweep's driver; trials only read it
    data["data"]["dataset_file"] = data["data"]["dataset_config"] = None
    data["data"]["rebuild_cache"] = False
    data["distributed"]["run_name"] = f"{sweep_name}-{trial_id}"
    data["training"]["resume_from_checkpoint"] = "latest"  # a trial restarted by --resume continues
    data["training"]["overwrite_output_dir"] = False
    data["tracking"]["mlflow_run_name"] = None
    return Config.from_dict(data, f"sweep {sweep_name}, trial {trial_id}")


def read_trial_result(output_dir: str, trial_id: str) -> dict[str, Any] | None:
    """What the trial's training returned, or None if it did not return (failed, stopped, still running)."""
    path = storage.join(trial_dir(output_dir, trial_id), TRIAL_RESULT)
    return json.loads(storage.read_text(path)) if storage.is_file(path) else None


class MetricReportCallback(TuneReportCallback):
    """Forwards to Tune only the worker reports that carry the metric: a report without it (a checkpoint
    between two validations) would be a Tune result that schedulers and searchers cannot use."""

    def __init__(self, metric: str):
        super().__init__()
        self.metric = metric

    def after_report(self, run_context, metrics, checkpoint) -> None:
        if not metrics or self.metric not in metrics[0]:
            return
        super().after_report(run_context, metrics, checkpoint)


def ray_ltx_trial(params: dict[str, Any], *, base: dict[str, Any], ties: list[Dimension], sweep_name: str,
                  metric: str, parent_run_id: str | None) -> None:
    """The Tune trainable: one full training with the trial's values (``params``, what Tune sampled)."""
    import ray.tune

    from ray_ltx.train.driver import train

    setup_logging()
    trial_id = ray.tune.get_context().get_trial_id()
    config = trial_config(base, params, ties, trial_id=trial_id, sweep_name=sweep_name)
    log.info("trial %s: %s -> %s", trial_id, params, config.output_dir)
    outcome = train(config, callbacks=[MetricReportCallback(metric)], parent_run_id=parent_run_id,
                    run_name=f"trial-{trial_id}", quiet=True)
    storage.write_text(storage.join(config.output_dir, TRIAL_RESULT), json.dumps({
        "trial_id": trial_id, "steps": outcome.steps, "final_loss": outcome.final_loss,
        "mlflow_run_id": outcome.mlflow_run_id, "seconds": outcome.seconds, "checkpoint": outcome.checkpoint,
    }, indent=1))
