"""Weights & Biases (``--report_to wandb``, finetrainers' default), the second tracker.

One W&B run has one writer at a time: the driver writes the config and closes its writer before the
workers start; rank 0 resumes the run (``wandb.init(id=..., resume="allow")``) to log metrics and
validation videos; the driver resumes it once more at the end to log the weights as a model artifact
and set the outcome. ``WANDB_MODE=offline`` keeps each writer's records in an
``offline-run-<time>-<run id>`` folder under ``<WANDB_DIR or output_dir>/wandb`` (``wandb sync`` uploads
them); online, the API key comes from ``WANDB_API_KEY`` or ``wandb login`` on every node, never from
ray-ltx. Sweeps: a trial's run is in the W&B group of the sweep's run (its run id).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import socket
from pathlib import Path
from typing import Any

from ray_ltx import storage
from ray_ltx.config import Config
from ray_ltx.errors import TrackingError
from ray_ltx.redaction import redact
from ray_ltx.tracking.base import RunInfo, Tracker

log = logging.getLogger(__name__)

#: exit codes W&B shows as the run's state (any non-zero code is "failed"); the exact status is in the summary
EXIT_CODES = {"FINISHED": 0, "FAILED": 1, "KILLED": 143}


def _import_wandb():
    try:
        import wandb
    except ImportError:
        raise TrackingError("--report_to wandb needs the wandb package: pip install wandb (or pip install "
                            "'ray-ltx[wandb]'), or pass --report_to mlflow / none") from None
    return wandb


class WandbTracker(Tracker):
    """A W&B run; ``settings`` are :func:`wandb.init`'s project, dir, mode, name, group and job_type."""

    backend = "wandb"
    title = "W&B"

    def __init__(self, settings: dict[str, Any], run_id: str, *, system_metrics: bool = False):
        super().__init__(run_id)
        self.settings = settings
        self.system_metrics = system_metrics
        self._run = None  # this process's writer, opened on first use
        self._last_step = 0

    def _writer(self):
        if self._run is None:
            wandb = _import_wandb()
            try:
                self._run = wandb.init(id=self.run_id, resume="allow", reinit="create_new", **self.settings,
                                       settings=wandb.Settings(console="off", silent=True,
                                                               x_disable_stats=not self.system_metrics))
            except Exception as error:  # no API key, a refused login, an unknown entity
                raise TrackingError(f"W&B refused to open run {self.run_id} ({type(error).__name__}: "
                                    f"{redact(str(error))[:500]}). Log in (`wandb login` or WANDB_API_KEY), "
                                    "set WANDB_MODE=offline, or pass --report_to none") from None
        return self._run

    def _close_writer(self, exit_code: int = 0) -> None:
        if self._run is not None:
            self._run.finish(exit_code=exit_code)
            self._run = None

    # -- the backend --------------------------------------------------------------------------------

    @classmethod
    def check(cls, config: Config) -> None:
        wandb = _import_wandb()
        if os.environ.get("WANDB_MODE") in ("offline", "disabled", "dryrun"):
            return
        try:
            wandb.login(verify=False, relogin=False)  # reads the key from WANDB_API_KEY or ~/.netrc, no request
        except Exception as error:
            raise TrackingError(f"--report_to wandb: {error} Log in with `wandb login` or set WANDB_API_KEY (on every "
                                "node), or set WANDB_MODE=offline and `wandb sync` the runs later") from None

    @classmethod
    def _settings(cls, config: Config, run_name: str | None = None, group: str | None = None,
                  job_type: str = "train") -> dict[str, Any]:
        local = not storage.is_uri(config.output_dir)
        folder = os.environ.get("WANDB_DIR") or (config.output_dir if local else None)
        # Ray workers do not inherit the driver's environment: the mode travels with the run's handle.
        return {"project": config.tracking.tracker_name, "dir": folder, "mode": os.environ.get("WANDB_MODE"),
                "name": run_name, "group": group, "job_type": job_type}

    @classmethod
    def start(cls, config: Config, *, run_name: str, parent_run_id: str | None, params: dict[str, str],
              tags: dict[str, str]) -> WandbTracker:
        run_id = secrets.token_hex(6)  # W&B run ids: letters and digits, unique in the project
        sweep = tags.get("ray_ltx.kind") == "sweep"
        group = run_id if sweep else parent_run_id
        tracker = cls(cls._settings(config, run_name, group, "sweep" if sweep else "train"), run_id,
                      system_metrics=config.tracking.log_system_metrics)
        run = tracker._writer()
        run.config.update(params)
        run.tags = tuple(sorted({config.training.training_type, "ray-ltx"}))
        tracker.set_tags({"run_status": "RUNNING", **tags})
        tracker._close_writer()  # rank 0 writes next
        return tracker

    @classmethod
    def resume(cls, config: Config, run_id: str, params: dict[str, str]) -> WandbTracker:
        tracker = cls(cls._settings(config), run_id, system_metrics=config.tracking.log_system_metrics)
        run = tracker._writer()
        run.config.update(params, allow_val_change=True)
        tracker.set_tags({"run_status": "RUNNING"})
        tracker.delete_tag("error")
        tracker._close_writer()
        return tracker

    @classmethod
    def attach(cls, handle: dict[str, Any]) -> WandbTracker:
        """The run in a worker. Its folder is the driver's path: on another node it is made there (W&B would fall
        back to a temporary folder), and offline records written there are announced with the node's name, since
        ``wandb sync`` has to run on that node."""
        settings = dict(handle["settings"])
        folder = settings.get("dir")
        if folder and not Path(folder).is_dir():
            Path(folder).mkdir(parents=True, exist_ok=True)
            if settings.get("mode") == "offline":
                log.warning("W&B offline records of run %s are written on node %s under %s/wandb: run `wandb sync` "
                            "there (or set WANDB_DIR to a folder every node shares)", handle["run_id"],
                            socket.gethostname(), folder)
        return cls(settings, handle["run_id"], system_metrics=handle["system_metrics"])

    def handle(self) -> dict[str, Any]:
        return {"backend": self.backend, "run_id": self.run_id, "settings": self.settings,
                "system_metrics": self.system_metrics}

    def describe(self) -> str:
        where = f"W&B run {self.run_id} in project {self.settings['project']!r}"
        if self.settings.get("mode") == "offline":
            return f"{where}, offline: wandb sync {self._offline_runs()}"
        return where

    def _offline_runs(self) -> str:
        return str(Path(self.settings["dir"] or ".") / "wandb" / f"offline-run-*-{self.run_id}")

    # -- the run ------------------------------------------------------------------------------------

    def set_tags(self, tags: dict[str, str]) -> None:
        """Key-value tags go to the run's summary (W&B's own tags are labels without values)."""
        run = self._writer()
        for key, value in tags.items():
            run.summary[key] = str(value)

    def delete_tag(self, key: str) -> None:
        del self._writer().summary[key]

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        """W&B buffers and retries in its own process; a step replayed after a restart is not logged again (W&B
        keeps a run's steps increasing)."""
        if step < self._last_step:
            return
        self._writer().log({k: float(v) for k, v in metrics.items() if v is not None}, step=step)
        self._last_step = step

    def flush(self, attempts: int = 1) -> bool:  # noqa: ARG002 - W&B's own process sends and retries
        return True

    def log_artifact(self, path: Path, artifact_dir: str = "") -> None:
        """Files go to the run's files (W&B's counterpart of MLflow's run artifacts)."""
        run = self._writer()
        dest = Path(run.dir) / artifact_dir / path.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        if path.is_dir():
            shutil.copytree(path, dest, dirs_exist_ok=True)
            run.save(str(dest / "**" / "*"), base_path=run.dir, policy="now")
        elif path.is_file():
            shutil.copyfile(path, dest)
            run.save(str(dest), base_path=run.dir, policy="now")

    def log_dict(self, data: dict[str, Any] | list[Any], artifact_file: str) -> None:
        self.log_text(json.dumps(data, indent=1, default=str), artifact_file)

    def log_text(self, text: str, artifact_file: str) -> None:
        run = self._writer()
        dest = Path(run.dir) / artifact_file
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(text)
        run.save(str(dest), base_path=run.dir, policy="now")

    def _log_columns(self, columns: dict[str, list[Any]], artifact_file: str) -> None:
        self.log_dict(columns, artifact_file)

    def log_video(self, step: int, key: str, video: Path, caption: str) -> None:
        wandb = _import_wandb()
        self._writer().log({key: wandb.Video(str(video), caption=caption, format="mp4")}, step=step)
        self._last_step = max(self._last_step, step)

    def log_model(self, path: Path, artifact_dir: str, registered_name: str | None) -> str | None:
        """The weights as a W&B model artifact, named ``registered_name`` (or ``<run id>-weights``); each run that
        logs the same name adds a version (``NAME:latest`` is the newest)."""
        wandb = _import_wandb()
        name = registered_name or f"{self.run_id}-{artifact_dir.replace('/', '-')}"
        artifact = wandb.Artifact(name, type="model", metadata={"run_id": self.run_id, "path": artifact_dir})
        if path.is_dir():
            artifact.add_dir(str(path), name=path.name)
        else:
            artifact.add_file(str(path))
        self._writer().log_artifact(artifact, aliases=["latest"])
        return f"wandb artifact {name}:latest" if registered_name else None

    def end(self, status: str, error: str | None = None) -> None:
        tags = {"run_status": status}
        if error:
            tags["error"] = redact(error)[:5000]
        self.set_tags(tags)
        self._close_writer(EXIT_CODES[status])

    def close(self, spill_dir: Path | None = None) -> None:  # noqa: ARG002 - W&B keeps what it could not send
        self._close_writer()

    def recovery_hint(self, weights: str, artifact_dir: str) -> str:  # noqa: ARG002 - W&B kept its records
        return f"  wandb sync {self._offline_runs()}"

    # -- sweeps -------------------------------------------------------------------------------------

    def children(self) -> list[RunInfo]:
        """None listed: W&B shows a sweep's trial runs in its group, and its offline mode cannot search runs."""
        return []

    def child(self, run_id: str) -> WandbTracker:
        return WandbTracker(self.settings, run_id)
