"""MLflow: run lifecycle on the driver, buffered metric logging on rank 0, nested runs for sweeps.

Only the driver and training rank 0 talk to MLflow. The driver creates the run (params, tags) and
ends it (FINISHED, FAILED with the error as a tag, or KILLED); rank 0 logs per-step metrics through
:class:`RunLogger`, which buffers and retries so a tracking server restart mid-run loses nothing.
The tracking URI travels in the config, so workers on other nodes reach the same server.

A server behind basic auth takes ``https://USER:PASSWORD@host[:port]``: MLflow is handed the URI
without its user-info, and the credentials go where MLflow reads them (``MLFLOW_TRACKING_USERNAME`` /
``MLFLOW_TRACKING_PASSWORD`` in the environment of the process that talks to the server). Each such
process (the driver, rank 0) derives them from the URI it holds in memory, so they are never put in
a Ray runtime env.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
import urllib.parse
from pathlib import Path
from typing import Any

from ray_ltx.config import Config
from ray_ltx.errors import TrackingError
from ray_ltx.redaction import SECRET_NAMES, Secret, redact, reveal

log = logging.getLogger(__name__)

MAX_PARAM_LENGTH = 6000  # MLflow's limit on a param value


def enabled(config: Config) -> bool:
    if config.tracking.report_to == "wandb":
        # Accepted for finetrainers compatibility; ray-ltx records runs in MLflow only (see README).
        log.warning("--report_to wandb: ray-ltx records runs in MLflow; logging to MLflow instead")
    return config.tracking.report_to in ("mlflow", "wandb")


def split_credentials(uri: str) -> tuple[str, tuple[str, str] | None]:
    """(the URI without user-info, (user, password) from it), for http(s) URIs; others as they are."""
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme not in ("http", "https") or "@" not in parts.netloc:
        return uri, None
    userinfo, _, host = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    return urllib.parse.urlunsplit(parts._replace(netloc=host)), (urllib.parse.unquote(user),
                                                                   urllib.parse.unquote(password))


def connect(uri: str | Secret) -> str:
    """The URI to hand MLflow; credentials in its user-info go to this process's environment, where MLflow
    reads them for every request (they take precedence over credentials already there)."""
    clean, credentials = split_credentials(reveal(uri))
    if credentials:
        os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = credentials
    return clean


def client(uri: str | Secret):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=connect(uri))


def check_reachable(uri: str, timeout: float = 10.0) -> None:
    """Fail fast, before any training, when a remote tracking server does not answer or refuses us."""
    if not uri.startswith(("http://", "https://")):
        if uri.startswith("sqlite:///"):
            Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        return
    clean = connect(uri).rstrip("/")
    failure = _probe(clean, "/health", timeout)
    if isinstance(failure, Exception):
        raise TrackingError(
            f"the MLflow tracking server {redact(uri)} is unreachable ({redact(str(failure))[:500]}). Start it (e.g. "
            "`mlflow server --host 127.0.0.1 --port 5000`), fix --mlflow_tracking_uri / MLFLOW_TRACKING_URI, or "
            "pass --report_to none to train without tracking")
    # /health answers without credentials; an API call shows whether the server takes ours. Only a refusal
    # counts here: a slow answer (a busy server hashing passwords) is left to MLflow's own retries.
    if failure is None:
        failure = _probe(clean, "/api/2.0/mlflow/experiments/search", timeout, params={"max_results": 1})
    if isinstance(failure, tuple):
        status, user = failure
        given = f"user {user!r}" if user else "no credentials"
        raise TrackingError(
            f"the MLflow tracking server {redact(uri)} refused the request with {given} (HTTP {status}). Put the "
            "right user and password in the URI (https://USER:PASSWORD@host, percent-encoding ':' '@' '/' in them) "
            "or in MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD; on HTTP 403 the user needs permission on "
            "the server (an MLflow admin grants it)")


def available(uri: str, wait_s: float) -> bool:
    """Whether the server answers (and takes our credentials) within ``wait_s``, polling: the end of a run
    asks this first, rather than sit in MLflow's own retries (minutes per call) when the server is down."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            check_reachable(uri, timeout=min(10.0, max(wait_s, 1.0)))
            return True
        except TrackingError:
            if time.monotonic() >= deadline:
                return False
        time.sleep(min(5.0, max(deadline - time.monotonic(), 0.0)))


def _probe(clean: str, endpoint: str, timeout: float, **request: Any) -> Exception | tuple[int, str | None] | None:
    """One request through MLflow's own HTTP client, so it authenticates as the run will (basic auth, a token,
    TLS settings, from the environment or ~/.mlflow/credentials), without MLflow's retries. Returns the
    connection error, (status, user) when the server refused us, or None."""
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    credentials = get_default_host_creds(clean)
    try:
        response = http_request(credentials, endpoint, "GET", max_retries=0, timeout=timeout,
                                raise_on_status=False, **request)
    except Exception as error:  # connection refused, unknown host, TLS, a timeout: MLflow wraps them all
        return error
    if response.status_code in (401, 403):
        return response.status_code, credentials.username
    return None


def _artifact_location(uri: str, name: str) -> str | None:
    """Beside a SQLite store, artifacts go next to the database (not wherever the process runs)."""
    if uri.startswith("sqlite:///"):
        root = Path(uri.removeprefix("sqlite:///")).parent / "artifacts"
        return (root / re.sub(r"[^A-Za-z0-9_.-]", "_", name)).as_uri()
    return None


def _experiment_id(mlflow_client, name: str, uri: str) -> str:
    experiment = mlflow_client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return mlflow_client.create_experiment(name, artifact_location=_artifact_location(uri, name))
    except Exception:  # created concurrently by another trial
        return mlflow_client.get_experiment_by_name(name).experiment_id


def versions() -> dict[str, str]:
    import importlib.metadata as metadata

    out = {}
    for package in ("ray-ltx", "torch", "diffusers", "transformers", "peft", "deepspeed", "ray", "mlflow"):
        try:
            out[f"version.{package}"] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[f"version.{package}"] = "not installed"
    return out


def config_params(config: Config) -> dict[str, str]:
    params = {}
    for key, value in config.flatten().items():
        if SECRET_NAMES.search(key):
            continue
        params[key] = redact(value)[:MAX_PARAM_LENGTH]
    return params


def ray_job_id() -> str | None:
    """The submission id of the Ray job this driver runs in (`ray job submit`), if any."""
    from ray_ltx.cluster import job_config

    job_id = os.environ.get("RAY_JOB_SUBMISSION_ID") or (job_config().get("metadata") or {}).get("job_submission_id")
    return job_id or os.environ.get("RAY_JOB_ID") or None


def start_run(config: Config, *, run_name: str | None = None, parent_run_id: str | None = None,
              extra_params: dict[str, Any] | None = None, tags: dict[str, str] | None = None) -> str:
    """Create a run holding the resolved config as params; returns its id."""
    from mlflow.exceptions import MlflowException

    uri = config.tracking_uri
    check_reachable(uri)
    try:
        return _create_run(config, uri, run_name, parent_run_id, extra_params, tags)
    except MlflowException as error:
        raise TrackingError(f"the MLflow tracking server {redact(uri)} refused to create the run: "
                            f"{redact(str(error))[:1000]}") from None


def _create_run(config: Config, uri: str, run_name: str | None, parent_run_id: str | None,
                extra_params: dict[str, Any] | None, tags: dict[str, str] | None) -> str:
    from mlflow.entities import Param, RunTag

    mlflow_client = client(uri)
    experiment_id = _experiment_id(mlflow_client, config.tracking.tracker_name, uri)
    all_tags = {
        "mlflow.runName": run_name or config.tracking.mlflow_run_name or Path(config.output_dir).name,
        "training_type": config.training.training_type,
        "model_id": redact(config.model.pretrained_model_name_or_path),
        "mlflow.source.name": "ray-ltx",
    }
    job_id = ray_job_id()
    if job_id:
        all_tags["ray_job_id"] = job_id
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    all_tags.update(tags or {})
    run = mlflow_client.create_run(experiment_id, run_name=all_tags["mlflow.runName"], tags=all_tags)
    params = {**config_params(config), **versions(), **{k: str(v) for k, v in (extra_params or {}).items()}}
    items = [Param(k, v) for k, v in sorted(params.items())]
    for start in range(0, len(items), 100):
        mlflow_client.log_batch(run.info.run_id, params=items[start : start + 100])
    mlflow_client.log_batch(run.info.run_id, tags=[RunTag("ray_ltx.output_dir", redact(config.output_dir))])
    return run.info.run_id


def end_run(uri: str, run_id: str, status: str = "FINISHED", error: str | None = None) -> None:
    """status: FINISHED, FAILED or KILLED; a failure's message is kept as the ``error`` tag."""
    mlflow_client = client(uri)
    if error:
        mlflow_client.set_tag(run_id, "error", redact(error)[:5000])
    mlflow_client.set_tag(run_id, "run_status", status)
    mlflow_client.set_terminated(run_id, status=status)


def log_artifacts(uri: str, run_id: str, paths: dict[str, str | Path]) -> None:
    """``{artifact_dir: local file or folder}``; empty artifact_dir means the run's root."""
    mlflow_client = client(uri)
    for artifact_dir, path in paths.items():
        path = Path(path)
        if path.is_dir():
            mlflow_client.log_artifacts(run_id, str(path), artifact_path=artifact_dir or None)
        elif path.is_file():
            mlflow_client.log_artifact(run_id, str(path), artifact_path=artifact_dir or None)


def log_table(uri: str, run_id: str, rows: list[dict[str, Any]], artifact_file: str) -> None:
    columns: dict[str, list[Any]] = {}
    for row in rows:
        for key in row:
            columns.setdefault(key, [])
    for row in rows:
        for key in columns:
            columns[key].append(row.get(key))
    client(uri).log_table(run_id, data=columns, artifact_file=artifact_file)


def _monitor_uri_argument(monitor_class, uri: str) -> dict[str, str]:
    """MLflow's system-metrics monitor logs to the global tracking URI unless told otherwise (newer MLflow)."""
    import inspect

    if "tracking_uri" in inspect.signature(monitor_class.__init__).parameters:
        return {"tracking_uri": uri}
    import mlflow

    mlflow.set_tracking_uri(uri)
    return {}


class RunLogger:
    """Per-step metrics from rank 0: buffered, sent in batches, retried until the server answers.

    A step's metrics leave the buffer only once MLflow has accepted them; if the server is still
    away at the end, they go to a JSONL file beside the outputs and the run says so in a warning.
    """

    def __init__(self, uri: str | Secret, run_id: str, flush_seconds: float = 5.0, system_metrics: bool = False):
        self.run_id = run_id
        self.uri = connect(uri)  # in this process (rank 0): credentials from the URI held in memory
        self.flush_seconds = flush_seconds
        self.buffer: list[tuple[str, float, int, int]] = []
        self.last_flush = time.monotonic()
        self.failures = 0
        self._client = client(self.uri)
        self._monitor = None
        if system_metrics:
            try:
                from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

                self._monitor = SystemMetricsMonitor(run_id, sampling_interval=10, resume_logging=True,
                                                     **_monitor_uri_argument(SystemMetricsMonitor, self.uri))
                self._monitor.start()
            except Exception as error:  # optional: psutil/pynvml missing or an old MLflow
                log.info("MLflow system metrics off: %s", error)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        timestamp = int(time.time() * 1000)
        self.buffer += [(k, float(v), timestamp, step) for k, v in metrics.items() if v is not None]
        if time.monotonic() - self.last_flush >= self.flush_seconds:
            self.flush()

    def log_artifact(self, path: Path, artifact_dir: str, attempts: int = 5) -> None:
        for attempt in range(attempts):
            try:
                self._client.log_artifact(self.run_id, str(path), artifact_path=artifact_dir)
                return
            except Exception as error:
                log.warning("MLflow artifact %s not logged yet (%s)", path.name, type(error).__name__)
                time.sleep(2.0 * (attempt + 1))
        log.error("MLflow artifact %s could not be logged; it stays in the output dir", path.name)

    def flush(self, attempts: int = 1) -> bool:
        from mlflow.entities import Metric

        self.last_flush = time.monotonic()
        for attempt in range(attempts):
            if not self.buffer:
                return True
            chunk = self.buffer[:1000]
            try:
                self._client.log_batch(self.run_id, metrics=[Metric(k, v, t, s) for k, v, t, s in chunk])
            except Exception as error:
                self.failures += 1
                log.warning("MLflow unreachable (%s); %d metric values buffered, will retry",
                            type(error).__name__, len(self.buffer))
                if attempt + 1 < attempts:
                    time.sleep(min(2.0 * (attempt + 1), 10.0))
                continue
            del self.buffer[: len(chunk)]
            if self.buffer:
                return self.flush(attempts)
            return True
        return not self.buffer

    def close(self, spill_dir: Path | None = None) -> None:
        if self._monitor is not None:
            try:
                self._monitor.finish()
            except Exception:
                pass
        if not self.flush(attempts=10) and spill_dir is not None:
            spill_dir.mkdir(parents=True, exist_ok=True)
            path = spill_dir / "unlogged_metrics.jsonl"
            with path.open("a") as handle:
                for key, value, timestamp, step in self.buffer:
                    handle.write(json.dumps({"key": key, "value": value, "timestamp": timestamp, "step": step}) + "\n")
            log.warning("MLflow did not come back: %d metric values saved to %s", len(self.buffer), path)
