"""MLflow, the main tracker: runs, nested sweep runs, buffered metrics, artifacts, image previews, the model registry.

The driver creates the run (params, tags), reopens it when a training resumes, and ends it (FINISHED,
FAILED with the error as a tag, or KILLED); rank 0 reattaches through :meth:`MlflowTracker.attach` to
log per-step metrics, which are buffered and retried so a tracking server restart mid-run loses
nothing. The tracking URI travels in the config, so workers on other nodes reach the same server.

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
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ray_ltx.config import Config
from ray_ltx.errors import ConfigError, TrackingError
from ray_ltx.redaction import Secret, redact, reveal
from ray_ltx.tracking.base import RunInfo, Tracker

log = logging.getLogger(__name__)

PREVIEW_FRAMES = 8  # frames side by side in a validation video's preview image


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

    clean = connect(uri)
    return MlflowClient(tracking_uri=clean, registry_uri=clean)


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


def _monitor_uri_argument(monitor_class, uri: str) -> dict[str, str]:
    """MLflow's system-metrics monitor logs to the global tracking URI unless told otherwise (newer MLflow)."""
    import inspect

    if "tracking_uri" in inspect.signature(monitor_class.__init__).parameters:
        return {"tracking_uri": uri}
    import mlflow

    mlflow.set_tracking_uri(uri)
    return {}


def _refused(uri: str, what: str, error: Exception) -> TrackingError:
    return TrackingError(f"the MLflow tracking server {redact(uri)} refused to {what}: {redact(str(error))[:1000]}")


def frame_strip(video: Path, frames: int = PREVIEW_FRAMES):
    """Up to ``frames`` frames of ``video``, evenly spaced, side by side: a preview MLflow's run page shows."""
    import numpy as np
    from PIL import Image

    from ray_ltx.data.video import decode_frames, probe

    info = probe(str(video))
    indices = sorted({round(i * (info.num_frames - 1) / max(frames - 1, 1)) for i in range(min(frames, info.num_frames))})
    clip = decode_frames(str(video), indices, info.height, info.width)
    return Image.fromarray(np.concatenate(list(clip), axis=1))


class MlflowTracker(Tracker):
    """A run in an MLflow tracking server or store (``--mlflow_tracking_uri``)."""

    backend = "mlflow"
    title = "MLflow"

    def __init__(self, uri: str | Secret, run_id: str, *, system_metrics: bool = False, flush_seconds: float = 5.0):
        super().__init__(run_id)
        self._secret_uri = Secret(reveal(uri))
        self.uri = connect(uri)  # in this process: credentials from the URI held in memory
        self._client = client(self.uri)
        self.system_metrics = system_metrics
        self.flush_seconds = flush_seconds
        self.buffer: list[tuple[str, float, int, int]] = []
        self.last_flush = time.monotonic()
        self._logged_through: dict[str, int] = {}
        self._monitor = None

    # -- the backend --------------------------------------------------------------------------------

    @classmethod
    def check(cls, config: Config) -> None:
        check_reachable(config.tracking_uri)

    @classmethod
    def start(cls, config: Config, *, run_name: str, parent_run_id: str | None, params: dict[str, str],
              tags: dict[str, str]) -> MlflowTracker:
        from mlflow.entities import Param
        from mlflow.exceptions import MlflowException

        uri = config.tracking_uri
        check_reachable(uri)
        try:
            mlflow_client = client(uri)
            experiment_id = _experiment_id(mlflow_client, config.tracking.tracker_name, uri)
            all_tags = {"mlflow.runName": run_name, "mlflow.source.name": "ray-ltx", **tags}
            if parent_run_id:
                all_tags["mlflow.parentRunId"] = parent_run_id
            run = mlflow_client.create_run(experiment_id, run_name=run_name, tags=all_tags)
            items = [Param(k, v) for k, v in sorted(params.items())]
            for start in range(0, len(items), 100):
                mlflow_client.log_batch(run.info.run_id, params=items[start : start + 100])
        except MlflowException as error:
            raise _refused(uri, "create the run", error) from None
        return cls(uri, run.info.run_id, system_metrics=config.tracking.log_system_metrics)

    @classmethod
    def resume(cls, config: Config, run_id: str, params: dict[str, str]) -> MlflowTracker | None:
        from mlflow.entities import Param
        from mlflow.exceptions import MlflowException

        uri = config.tracking_uri
        check_reachable(uri)
        tracker = cls(uri, run_id, system_metrics=config.tracking.log_system_metrics)
        try:
            run = tracker._client.get_run(run_id)
        except MlflowException as error:
            if error.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise _refused(uri, f"read run {run_id}", error) from None
        if run.info.lifecycle_stage == "deleted":
            return None
        held = run.data.params
        # MLflow keeps a param's first value: what changed for the resumed part (more steps, say) goes in tags.
        new = [Param(k, v) for k, v in sorted(params.items()) if k not in held]
        changed = {f"resumed.{k}": v for k, v in params.items() if k in held and held[k] != v}
        try:
            for start in range(0, len(new), 100):
                tracker._client.log_batch(run_id, params=new[start : start + 100])
            tracker._client.update_run(run_id, status="RUNNING")
            tracker.set_tags({"run_status": "RUNNING", **changed})
            if "error" in run.data.tags:
                tracker.delete_tag("error")
        except MlflowException as error:
            raise _refused(uri, f"reopen run {run_id}", error) from None
        return tracker

    @classmethod
    def attach(cls, handle: dict[str, Any]) -> MlflowTracker:
        tracker = cls(handle["uri"], handle["run_id"], system_metrics=handle["system_metrics"])
        # A restarted rank 0 replays the steps since the last checkpoint: steps already logged are not logged again.
        try:
            metrics = tracker._client.get_run(tracker.run_id).data.to_proto().metrics
            tracker._logged_through = {metric.key: metric.step for metric in metrics}
        except Exception as error:  # the server away: training goes on, a replayed step may be logged twice
            log.warning("MLflow unreachable (%s): steps replayed after a restart may be logged twice",
                        type(error).__name__)
        if tracker.system_metrics:
            tracker._start_system_metrics()
        return tracker

    def _start_system_metrics(self) -> None:
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            self._monitor = SystemMetricsMonitor(self.run_id, sampling_interval=10, resume_logging=True,
                                                 **_monitor_uri_argument(SystemMetricsMonitor, self.uri))
            self._monitor.start()
        except Exception as error:  # optional: psutil/pynvml missing or an old MLflow
            log.info("MLflow system metrics off: %s", error)

    def handle(self) -> dict[str, Any]:
        return {"backend": self.backend, "uri": self._secret_uri, "run_id": self.run_id,
                "system_metrics": self.system_metrics}

    def describe(self) -> str:
        return f"MLflow run {self.run_id} at {redact(self.uri)} (mlflow ui --backend-store-uri {redact(self.uri)})"

    def available(self, wait_s: float) -> bool:
        return available(self._secret_uri.reveal(), wait_s)

    # -- the run ------------------------------------------------------------------------------------

    def set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self._client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def delete_tag(self, key: str) -> None:
        self._client.delete_tag(self.run_id, key)

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        timestamp = int(time.time() * 1000)
        self.buffer += [(k, float(v), timestamp, step) for k, v in metrics.items()
                        if v is not None and step > self._logged_through.get(k, -1)]
        if time.monotonic() - self.last_flush >= self.flush_seconds:
            self.flush()

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

    def log_artifact(self, path: Path, artifact_dir: str = "") -> None:
        if path.is_dir():
            self._client.log_artifacts(self.run_id, str(path), artifact_path=artifact_dir or None)
        elif path.is_file():
            self._client.log_artifact(self.run_id, str(path), artifact_path=artifact_dir or None)

    def log_dict(self, data: dict[str, Any] | list[Any], artifact_file: str) -> None:
        self._client.log_dict(self.run_id, data, artifact_file)

    def log_text(self, text: str, artifact_file: str) -> None:
        self._client.log_text(self.run_id, text, artifact_file)

    def _log_columns(self, columns: dict[str, list[Any]], artifact_file: str) -> None:
        self._client.log_table(self.run_id, data=columns, artifact_file=artifact_file)

    def log_video(self, step: int, key: str, video: Path, caption: str, attempts: int = 5) -> None:
        """The mp4 and its prompt under ``validation/step_NNNNNN/``, and a frame strip as the image ``key`` at
        ``step`` (the run page's image charts). Retried: a tracking outage must not stop the training."""
        preview = frame_strip(video)
        with tempfile.TemporaryDirectory() as tmp:
            prompt = Path(tmp) / video.with_suffix(".txt").name
            prompt.write_text(caption + "\n")
            for attempt in range(attempts):
                try:
                    for path in (video, prompt):
                        self._client.log_artifact(self.run_id, str(path), artifact_path=f"validation/step_{step:06d}")
                    self._client.log_image(self.run_id, preview, key=key, step=step, synchronous=True)
                    return
                except Exception as error:
                    log.warning("MLflow: validation video %s not logged yet (%s)", video.name, type(error).__name__)
                    time.sleep(2.0 * (attempt + 1))
        log.error("MLflow: validation video %s could not be logged; it stays in the output dir", video.name)

    def log_model(self, path: Path, artifact_dir: str, registered_name: str | None) -> str | None:
        from mlflow.exceptions import MlflowException

        self.log_artifact(path, artifact_dir)
        if not registered_name:
            return None
        source = f"runs:/{self.run_id}/{artifact_dir}"
        try:
            try:
                self._client.create_registered_model(registered_name, description="Finetuned with ray-ltx")
            except MlflowException as error:
                if error.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
            version = self._client.create_model_version(registered_name, source=source, run_id=self.run_id,
                                                        description=f"weights of run {self.run_id}")
        except MlflowException as error:
            raise _refused(self.uri, f"register the weights as model {registered_name!r}", error) from None
        self.set_tags({"registered_model": f"{registered_name} version {version.version}"})
        return f"models:/{registered_name}/{version.version}"

    def end(self, status: str, error: str | None = None) -> None:
        if error:
            self._client.set_tag(self.run_id, "error", redact(error)[:5000])
        self._client.set_tag(self.run_id, "run_status", status)
        self._client.set_terminated(self.run_id, status=status)

    def close(self, spill_dir: Path | None = None) -> None:
        """Stop the system metrics, send what is buffered (retrying); if the server is still away, the metrics
        go to ``unlogged_metrics.jsonl`` in ``spill_dir`` and a warning says so."""
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

    def recovery_hint(self, weights: str, artifact_dir: str) -> str:
        shown = redact(self.uri)
        folder = Path(weights).is_dir()
        return (f"  MLFLOW_TRACKING_URI={shown} mlflow artifacts "
                f"{'log-artifacts --local-dir' if folder else 'log-artifact --local-file'} {weights} -r {self.run_id} "
                f"-a {artifact_dir}\n"
                f"  python -c \"from mlflow import MlflowClient; MlflowClient('{shown}').set_terminated('{self.run_id}')\"")

    # -- sweeps -------------------------------------------------------------------------------------

    def children(self) -> list[RunInfo]:
        experiment_id = self._client.get_run(self.run_id).info.experiment_id
        runs = self._client.search_runs([experiment_id], max_results=5000,
                                        filter_string=f"tags.`mlflow.parentRunId` = '{self.run_id}'")
        return [RunInfo(r.info.run_id, r.info.run_name or "", r.info.status, r.info.start_time or 0, dict(r.data.tags))
                for r in runs]

    def child(self, run_id: str) -> MlflowTracker:
        return MlflowTracker(self._secret_uri, run_id)


def download(uri: str, tracking_uri: str | Secret | None) -> str:
    """A local copy of an MLflow artifact or registered model (``runs:/``, ``models:/NAME/VERSION|latest``, ...)."""
    from mlflow.exceptions import MlflowException

    from ray_ltx.config import default_tracking_uri

    store = connect(tracking_uri or default_tracking_uri())
    try:
        with _global_store(store):
            import mlflow

            return mlflow.artifacts.download_artifacts(artifact_uri=uri)
    except MlflowException as error:
        hint = " (register one with `ray-ltx train ... --register_model NAME`)" if uri.startswith("models:/") else ""
        raise ConfigError(f"--lora {uri}: not found in the MLflow store {redact(store)}{hint}. Point "
                          "--mlflow_tracking_uri or MLFLOW_TRACKING_URI at the store that holds it "
                          f"({redact(str(error))[:300]})") from None


@contextmanager
def _global_store(uri: str) -> Iterator[None]:
    """MLflow's global tracking and registry URI, for a block: MLflow 3.17 resolves ``models:/`` URIs in the global
    registry even when ``download_artifacts`` is given its own URIs."""
    import mlflow

    previous = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous[0])
        mlflow.set_registry_uri(previous[1])
