"""The driver of a training run: checks, cache, tracking run, TorchTrainer, outputs, summary.

Runs wherever ``ray-ltx train`` runs (a laptop, a Ray head, a ``ray job submit`` entrypoint).
Workers never share a filesystem with it: they read the cache and write checkpoints through
``storage_path``; the final weights come back inside the last Ray checkpoint and the driver
copies them to ``output_dir``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from ray_ltx import faults, locks, storage
from ray_ltx.config import Config
from ray_ltx.errors import (
    CheckpointError,
    OutputDirError,
    StorageFullError,
    TrainingDivergedError,
    UserError,
    is_disk_full,
)
from ray_ltx.model.lora import COMFYUI_WEIGHTS, DIFFUSERS_WEIGHTS
from ray_ltx.redaction import redact, redacted_config
from ray_ltx.tracking import Tracker
from ray_ltx.train import checkpoint as ckpt
from ray_ltx.train import elastic
from ray_ltx.train.memory import MEMORY_JSON, MEMORY_MD
from ray_ltx.train.spec import WorkerSpec

if TYPE_CHECKING:
    from ray_ltx.train.data import DataPlan

log = logging.getLogger(__name__)

TRAINING_CONFIG = "training_config.json"
RESOLVED_CONFIG = "config.yaml"
# What a run writes to output_dir; --overwrite_output_dir removes these and nothing else (the cache stays).
RUN_OUTPUTS = (TRAINING_CONFIG, RESOLVED_CONFIG, DIFFUSERS_WEIGHTS, COMFYUI_WEIGHTS, "transformer", MEMORY_MD,
               MEMORY_JSON, "validation")
END_OF_RUN_WAIT_S = 60.0  # how long the end of a run waits for a tracking server that does not answer
#: In the run's storage folder: the tracking run that `--resume_from_checkpoint latest` continues.
TRACKING_RUN = "tracking_run.json"


@dataclass
class TrainResult:
    output_dir: str
    steps: int
    final_loss: float | None
    checkpoint: str | None
    mlflow_run_id: str | None  # the tracking run's id (MLflow's, or W&B's with --report_to wandb)
    tracking_uri: str | None
    training_config: dict[str, Any] = field(default_factory=dict)
    memory: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    tracking: str | None = None  # where the run is recorded, in words
    registered_model: str | None = None  # where the registered weights load from (models:/NAME/VERSION)
    workers: dict[str, Any] = field(default_factory=dict)  # elastic.Journal.record(): group sizes and restarts


class _Stopped(BaseException):
    """SIGTERM (``ray job stop``, a scheduler pre-empting the driver)."""


def storage_dir(config: Config) -> str:
    return storage.join(storage.absolute(config.storage_path), config.distributed.run_name)


def _prepare_output_dir(config: Config, run_dir: str) -> None:
    """Refuse to mix two runs in one output_dir unless asked to resume or overwrite."""
    output = storage.absolute(config.output_dir)
    previous = storage.is_file(storage.join(output, TRAINING_CONFIG)) or bool(ckpt.checkpoint_dirs(run_dir)) \
        or storage.is_file(storage.join(run_dir, RAY_SNAPSHOT))
    if not previous:
        return
    if config.training.resume_from_checkpoint:
        return
    if config.training.overwrite_output_dir:
        log.warning("--overwrite_output_dir: removing the previous run in %s (the latent cache is kept)",
                    redact(output))
        storage.delete_dir(run_dir)  # <storage_path>/<run_name>: Ray Train's directory of this run
        for name in RUN_OUTPUTS:
            path = storage.join(output, name)
            if storage.is_dir(path):
                storage.delete_dir(path)
            elif storage.is_file(path):
                storage.delete_file(path)
        return
    raise OutputDirError(
        f"--output_dir {redact(output)} holds another training run (checkpoints in {redact(run_dir)}). Pass "
        "--resume_from_checkpoint latest to continue it, --overwrite_output_dir to replace it, or another --output_dir"
    )


def _resume_point(config: Config, run_dir: str) -> tuple[str | None, int]:
    """(explicit checkpoint path for the workers, the step the run continues from).

    The checkpoint is checked against the config here, on the driver, so a mismatch (another
    LoRA rank, training type, backend) fails before any worker starts.
    """
    wanted = config.training.resume_from_checkpoint
    if not wanted:
        return None, 0
    explicit = None
    if wanted == "latest":
        found = ckpt.latest_checkpoint(run_dir)
        if found is None:
            log.info("--resume_from_checkpoint latest: no checkpoint in %s yet, starting at step 0", run_dir)
            return None, 0
        path, state = found
    else:
        path = explicit = storage.absolute(wanted)
        state = ckpt.verify(path)
    ckpt.check_compatible(state, config, config.distributed.max_workers, path)
    _retire_damaged(run_dir, state.step)
    log.info("resuming from %s (step %d)", path, state.step)
    return explicit, state.step


#: Ray Train's record of the run's checkpoints; it refuses to start while it names a checkpoint that is gone.
RAY_SNAPSHOT = "checkpoint_manager_snapshot.json"


def _retire_damaged(run_dir: str, step: int) -> None:
    """Checkpoints after the resume point that failed to load go, so the steps they held are written anew.

    ray-ltx finds checkpoints by scanning storage, so Ray Train's own snapshot, which would still name the
    removed checkpoint, goes too (its checkpoint count starts over; the checkpoints on storage stay usable).
    """
    retired = False
    for path in ckpt.checkpoint_dirs(run_dir):
        if storage.is_file(storage.join(path, ckpt.DAMAGED)) and int(path.rsplit("_", 1)[-1]) > step:
            log.warning("removing %s, marked damaged; its steps are trained again from step %d", path, step)
            storage.delete_dir(path)
            retired = True
    snapshot = storage.join(run_dir, RAY_SNAPSHOT)
    if retired and storage.is_file(snapshot):
        storage.delete_file(snapshot)


def training_config_block(config: Config, trainable: int, plan: DataPlan) -> dict[str, Any]:
    """The finetrainers "Training configuration" fields (an elastic run's batch is that of its MAX workers)."""
    training = config.training
    return {
        "trainable parameters": trainable,
        "total samples": plan.samples,
        "train epochs": plan.epochs(training.train_steps),
        "train steps": training.train_steps,
        "batches per device": training.batch_size,
        "total batches observed per epoch": plan.micro_batches_per_epoch,
        "train batch size": training.batch_size * plan.micro_batches_per_step,
        "gradient accumulation steps": training.gradient_accumulation_steps,
    }


def build_trainer(config: Config, spec: WorkerSpec, callbacks: list | None = None):
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from ray_ltx.train.loop import train_loop

    dist = config.distributed
    use_gpu = dist.use_gpu if dist.use_gpu is not None else _cluster_has_gpus()
    resources = {"CPU": dist.cpus_per_worker, **dist.resources_per_worker}
    if use_gpu:
        resources["GPU"] = dist.gpus_per_worker
    scaling = ray.train.ScalingConfig(num_workers=dist.num_workers, use_gpu=use_gpu,
                                      resources_per_worker=resources, placement_strategy=dist.placement_strategy,
                                      elastic_resize_monitor_interval_s=dist.elastic_resize_interval_s)
    run_config = ray.train.RunConfig(
        name=dist.run_name,
        storage_path=storage.absolute(config.storage_path),
        checkpoint_config=ray.train.CheckpointConfig(num_to_keep=config.training.checkpointing_limit),
        failure_config=ray.train.FailureConfig(max_failures=dist.failures_allowed),
        callbacks=callbacks,
    )
    return TorchTrainer(
        train_loop,
        train_loop_config={"spec": spec},
        scaling_config=scaling,
        run_config=run_config,
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo", timeout_s=dist.nccl_timeout),
    )


def _cluster_has_gpus() -> bool:
    from ray_ltx.cluster import cluster_gpus

    return cluster_gpus() > 0


def _copy_export(checkpoint_path: str, output_dir: str) -> None:
    """The final weights into output_dir: a folder (``transformer/``) is swapped in whole, a file atomically,
    so a crash mid-copy leaves the previous weights or none, never a half-copied model."""
    source = storage.join(checkpoint_path, ckpt.EXPORT_DIR)
    if not storage.is_dir(source):
        raise CheckpointError(f"the final checkpoint {redact(checkpoint_path)} holds no exported weights")
    for name in storage.list_dirs(source):
        storage.replace_dir(storage.join(source, name), storage.join(output_dir, name))
    for path in storage.list_files(source, recursive=False):
        storage.write_bytes(storage.join(output_dir, path.rsplit("/", 1)[-1]), storage.read_bytes(path))


def train(config: Config, *, callbacks: list | None = None, parent_run_id: str | None = None,
          run_name: str | None = None, quiet: bool = False) -> TrainResult:
    """Train as configured; returns where everything went. Raises UserError subclasses for the user's mistakes.

    The run holds output_dir's lock throughout: a second run there stops with an error naming this one.
    """
    config = config.resolved()
    with locks.exclusive(config.output_dir, "output", OutputDirError):
        return _train(config, callbacks=callbacks, parent_run_id=parent_run_id, run_name=run_name, quiet=quiet)


def _train(config: Config, *, callbacks: list | None, parent_run_id: str | None, run_name: str | None,
           quiet: bool) -> TrainResult:
    from ray_ltx import tracking
    from ray_ltx.cluster import cluster_shape, init_ray
    from ray_ltx.data.cache import LatentCache
    from ray_ltx.data.pipeline import ensure_cache
    from ray_ltx.train.data import DataPlan, split_holdout

    started = time.monotonic()
    output_dir = config.output_dir
    run_dir = storage_dir(config)
    _prepare_output_dir(config, run_dir)
    resume_path, start_step = _resume_point(config, run_dir)
    faults.FaultPlan.from_env("")  # a malformed RAY_LTX_FAULT is refused before any work
    if tracking.enabled(config):
        tracking.check(config)  # before any cluster or model work
    _check_model(config)
    init_ray(config)

    tracker = None
    if tracking.enabled(config):
        shape_info = cluster_shape()
        tracker = _open_tracker(config, run_dir, run_name, parent_run_id, {
            "cluster.nodes": shape_info["nodes"], "cluster.gpus": shape_info["gpus"],
            "cluster.workers": config.to_dict()["distributed"]["num_workers"]})
        log.info("%s (%s %r)", tracker.describe(), "project" if tracker.backend == "wandb" else "experiment",
                 config.tracking.tracker_name)

    previous_handler = signal.getsignal(signal.SIGTERM)

    def _on_term(signum, frame):  # noqa: ARG001
        raise _Stopped("stopped by SIGTERM")

    if _in_main_thread():
        signal.signal(signal.SIGTERM, _on_term)
    try:
        cache: LatentCache = ensure_cache(config)
        buckets = [str(b) for b in config.data.video_resolution_buckets if str(b) in cache.manifest.buckets]
        per_bucket, held = split_holdout(cache, buckets, config.data.holdout_samples)
        if not per_bucket:
            raise UserError(f"the latent cache {cache.cache_dir} has no training sample in buckets {buckets}")
        training = config.training
        plan = DataPlan(per_bucket, training.batch_size,
                        training.gradient_accumulation_steps * config.distributed.max_workers, training.seed)
        storage.write_text(storage.join(output_dir, RESOLVED_CONFIG),
                           yaml.safe_dump(redacted_config(config), sort_keys=False))
        fitted = _fit(config, cache, plan, held, start_step, resume_path, run_dir, tracker, callbacks)
        _copy_export(fitted.checkpoint, output_dir)
        block = training_config_block(config, fitted.trainable_parameters, plan)
        storage.write_text(storage.join(output_dir, TRAINING_CONFIG), json.dumps(block, indent=4))
        registered = _finish_tracking(config, tracker, output_dir, cache, fitted.memory, fitted.workers) if tracker else None
    except (_Stopped, KeyboardInterrupt) as error:
        if tracker:
            _end_run_quietly(tracker, "KILLED", f"stopped: {error or 'interrupted'}")
        raise
    except BaseException as error:
        if tracker:
            _end_run_quietly(tracker, "FAILED", _describe_failure(error))
        user_error = _as_user_error(error)
        if user_error is error:
            raise
        if _in_chain(user_error, error):  # the user's error found inside Ray's wrappers: its message says it all
            raise user_error from None
        raise user_error from error
    finally:
        if _in_main_thread():
            signal.signal(signal.SIGTERM, previous_handler)

    outcome = TrainResult(output_dir, fitted.steps, fitted.loss, fitted.checkpoint, tracker.run_id if tracker else None,
                          config.tracking_uri if tracker and tracker.backend == "mlflow" else None, block,
                          fitted.memory, round(time.monotonic() - started, 1), tracker.describe() if tracker else None,
                          registered, fitted.workers)
    if not quiet:
        print(format_summary(config, outcome))
    return outcome


def _open_tracker(config: Config, run_dir: str, run_name: str | None, parent_run_id: str | None,
                  extra_params: dict[str, Any]) -> Tracker:
    """The tracking run: with ``--resume_from_checkpoint latest``, the one this training recorded in its storage
    folder (one run and one loss curve however often it is resumed); otherwise a new one, recorded there."""
    from ray_ltx import tracking

    record = storage.join(run_dir, TRACKING_RUN)
    if config.training.resume_from_checkpoint == "latest" and storage.is_file(record):
        saved = json.loads(storage.read_text(record))
        if saved["backend"] == config.tracking.report_to:
            tracker = tracking.resume(config, saved["run_id"], extra_params)
            if tracker is not None:
                log.info("resuming: continuing tracking run %s", saved["run_id"])
                return tracker
            log.warning("resuming: the tracking run %s of this training is gone from %s; starting a new run",
                        saved["run_id"], redact(config.tracking_uri))
    tracker = tracking.start(config, run_name=run_name, parent_run_id=parent_run_id, extra_params=extra_params)
    storage.write_text(record, json.dumps({"backend": tracker.backend, "run_id": tracker.run_id}))
    return tracker


def _check_model(config: Config):
    """The model family, and everything about the model and validation checked before any cluster work."""
    from ray_ltx.model.family import family_for
    from ray_ltx.train import validation

    family = family_for(config)
    family.check_training()
    validation.check(config, family)
    log.info("model: %s from %s", family.describe(), config.model.pretrained_model_name_or_path)
    return family


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@dataclass(frozen=True)
class _Fitted:
    """What a TorchTrainer run left: the step reached, its loss, the final checkpoint and the workers' reports."""

    steps: int
    loss: float | None
    checkpoint: str
    trainable_parameters: int
    memory: list[dict[str, Any]] = field(default_factory=list)
    workers: dict[str, Any] = field(default_factory=dict)  # elastic.Journal.record()


def _fit(config: Config, cache, plan: DataPlan, held: list[str], start_step: int, resume_path: str | None,
         run_dir: str, tracker: Tracker | None, callbacks: list | None) -> _Fitted:
    """Run the TorchTrainer (or, when the run already reached its last step, only find its final checkpoint)."""
    from ray_ltx.train.data import holdout_batches

    training = config.training
    if start_step >= training.train_steps:
        found = ckpt.latest_checkpoint(run_dir)
        if found is None:
            raise CheckpointError(f"nothing to resume in {run_dir}")
        path, state = found
        log.info("the run already reached step %d of %d; re-exporting from %s", state.step, training.train_steps, path)
        return _Fitted(state.step, state.last_loss, path, state.trainable_parameters)
    from ray_ltx.train.loop import FATAL

    stale = storage.join(run_dir, FATAL)
    if storage.is_file(stale):  # from an earlier attempt of this run; this one starts afresh
        storage.delete_file(stale)
    workers = config.to_dict()["distributed"]["num_workers"]
    log.info("training %d steps (from step %d) on %d samples in %d bucket(s): %d micro-batches per epoch, %s workers",
             training.train_steps, start_step, plan.samples, len(plan.per_bucket), plan.micro_batches_per_epoch, workers)
    config_dict = config.to_dict()
    # Ray keeps the train loop config in its Train run state (the dashboard shows it): the workers get the
    # tracking URI in the tracker's handle as a Secret, which prints redacted, and need no copy of it in the config.
    config_dict["tracking"]["mlflow_tracking_uri"] = redact(config_dict["tracking"]["mlflow_tracking_uri"] or "") or None
    scratch = run_dir if not storage.is_uri(run_dir) else "/tmp/ray-ltx-faults"
    journal = elastic.start_journal()
    spec = WorkerSpec(
        config=config_dict,
        cache_dir=cache.cache_dir,
        latent_spec=cache.manifest.latent_spec,
        plan=plan,
        plan_start_step=start_step,
        storage_dir=run_dir,
        scratch_dir=scratch,
        resume_path=resume_path,
        heldout_batches=holdout_batches(cache, held) if held else [],
        tracking=tracker.handle() if tracker else None,
        faults=faults.FaultPlan.from_env(scratch),
        sample_log=os.environ.get("RAY_LTX_SAMPLE_LOG"),
        journal=journal,
        interactive=sys.stderr.isatty(),
    )
    trainer = build_trainer(config, spec, callbacks)
    try:
        result = _fit_interruptibly(trainer)
    except BaseException:
        elastic.end_journal(journal)
        raise
    workers_record = elastic.end_journal(journal, read=True)
    if elastic.describe(workers_record):
        log.info("worker groups: %s", elastic.describe(workers_record))
    value = result.return_value or {}
    if value.get("fatal"):
        raise _fatal_error(value["fatal"])
    if result.checkpoint is None:
        raise CheckpointError(f"training ended without a final checkpoint in {run_dir}")
    if value.get("validation_error"):
        log.warning("%s; the final weights are saved", value["validation_error"])
    return _Fitted(value.get("step", training.train_steps), value.get("loss"), result.checkpoint.path,
                   value.get("trainable_parameters", 0), value.get("memory", []), workers_record)


def _fatal_error(record: dict[str, str]) -> UserError:
    """A worker's deterministic error (recorded by the train loop), as the user error it was."""
    from ray_ltx import errors

    cls = getattr(errors, record.get("type", ""), None)
    if not (isinstance(cls, type) and issubclass(cls, UserError)):
        cls = UserError
    return cls(record.get("message", "training failed"))


def _fit_interruptibly(trainer):
    """``trainer.fit()`` in a helper thread, so that the main thread keeps running Python signal handlers.

    ``fit()`` waits on the Train controller inside Ray's C++ core, where a SIGTERM handler would not run
    until training ends: ``ray job stop`` would kill the driver before it could mark the MLflow run.
    """
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = trainer.fit()
        except BaseException as error:  # handed to the main thread
            outcome["error"] = error

    thread = threading.Thread(target=run, name="ray-ltx-fit", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.5)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def _describe_failure(error: BaseException) -> str:
    cause = _root_cause(error)
    return f"{type(cause).__name__}: {cause}"


def _root_cause(error: BaseException) -> BaseException:
    """The user's error inside Ray's wrappers (TrainingFailedError -> worker exception)."""
    seen = set()
    current = error
    while id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, UserError):
            return current
        nested = getattr(current, "worker_failures", None)
        if isinstance(nested, dict) and nested:
            current = next(iter(nested.values()))
            continue
        nested = getattr(current, "cause", None) or current.__cause__
        if nested is None:
            break
        current = nested
    for cls in (TrainingDivergedError, CheckpointError):
        if cls.__name__ in str(error):
            return cls(str(error).split(f"{cls.__name__}: ", 1)[-1].strip().splitlines()[0])
    return current


def _in_chain(needle: BaseException, error: BaseException) -> bool:
    """Whether ``needle`` is ``error`` or among its causes (raising it ``from error`` would make a cycle)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if current is needle:
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def _as_user_error(error: BaseException) -> BaseException:
    if is_disk_full(error):
        return StorageFullError(
            f"no space left on device during training ({_describe_failure(error)}). Free space in the storage path "
            "and output dir, then rerun with --resume_from_checkpoint latest (incomplete checkpoints are never used)")
    cause = _root_cause(error)
    return cause if isinstance(cause, UserError) else error


def _finish_tracking(config: Config, tracker: Tracker, output_dir: str, cache, memory: list[dict[str, Any]],
                     workers: dict[str, Any] | None = None) -> str | None:
    """Log the outputs (and register the weights) and end the run FINISHED, best effort: the weights are in
    output_dir already, so a tracking outage now costs the run's record, not the run (which still exits 0).
    Returns where the registered weights load from, if they were registered."""
    problem = None if tracker.available(END_OF_RUN_WAIT_S) else "it does not answer, or refuses the credentials"
    if problem is None:
        try:
            registered = _log_outputs(config, tracker, output_dir, cache, memory, workers or {})
            tracker.end("FINISHED")
            return registered
        except Exception as error:
            problem = f"{type(error).__name__}: {redact(str(error))[:300]}"
    weights, artifact_dir = _weights(config, output_dir)
    log.warning("%s could not record the end of run %s (%s). The weights are safe at %s. Once %s is back, log them "
                "and end the run with:\n%s", tracker.title, tracker.run_id, problem, weights, tracker.title,
                tracker.recovery_hint(str(weights), artifact_dir))
    return None


def _end_run_quietly(tracker: Tracker, status: str, error: str, wait_s: float = 10.0) -> None:
    """End a failed or stopped run; the tracker being down too must not hide the run's own error."""
    try:
        if tracker.available(wait_s):
            tracker.end(status, error=error)
            return
    except Exception as tracking_error:
        log.debug("ending run %s: %s", tracker.run_id, tracking_error)
    log.warning("%s did not answer: run %s could not be marked %s and stays RUNNING", tracker.title,
                tracker.run_id, status)


def _weights(config: Config, output_dir: str) -> tuple[Path, str]:
    """The final weights in output_dir, and where the run keeps them."""
    if config.training.training_type == "lora":
        return Path(output_dir) / DIFFUSERS_WEIGHTS, "weights"
    return Path(output_dir) / "transformer", "weights/transformer"


@contextlib.contextmanager
def _local_outputs(output_dir: str, names: tuple[str, ...]):
    """``output_dir`` as a local folder for the tracker's uploads: itself, or (s3://, gs://) a temporary copy of
    the named files and folders."""
    if not storage.is_uri(output_dir):
        yield Path(output_dir)
        return
    with tempfile.TemporaryDirectory(prefix="ray-ltx-outputs-") as temp:
        for name in names:
            source = storage.join(output_dir, name)
            files = storage.list_files(source) if storage.is_dir(source) else [source] if storage.is_file(source) else []
            for path in files:
                target = Path(temp) / name / path[len(source):].lstrip("/") if path != source else Path(temp) / name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(storage.read_bytes(path))
        yield Path(temp)


def _log_outputs(config: Config, tracker: Tracker, output_dir: str, cache, memory: list[dict[str, Any]],
                 workers: dict[str, Any]) -> str | None:
    weights, artifact_dir = _weights(config, output_dir)
    with _local_outputs(output_dir, (RESOLVED_CONFIG, TRAINING_CONFIG, MEMORY_MD, weights.name)) as local:
        return _log_local_outputs(config, tracker, local, cache, memory, workers, artifact_dir)


def _log_local_outputs(config: Config, tracker: Tracker, local: Path, cache, memory: list[dict[str, Any]],
                       workers: dict[str, Any], artifact_dir: str) -> str | None:
    for artifact_dir_, path in (("", local / RESOLVED_CONFIG), ("config", local / TRAINING_CONFIG),
                               ("memory", local / MEMORY_MD)):
        tracker.log_artifact(path, artifact_dir_)
    if memory:
        tracker.log_table(memory, "memory/memory_report.json")
    tracker.log_dict(cache.manifest.summary(), "cache/manifest_summary.json")
    elastic.log_to_tracker(tracker, workers)
    registered = tracker.log_model(local / _weights(config, str(local))[0].name, artifact_dir,
                                   config.tracking.register_model)
    if registered:
        log.info("the weights are registered: %s", registered)
    return registered


def format_summary(config: Config, result: TrainResult) -> str:
    output_dir = redact(result.output_dir)
    lines = [
        "",
        "=" * 72,
        f"ray-ltx train: {config.training.training_type}, {result.steps} steps in {result.seconds:.0f} s, "
        f"final loss {result.final_loss:.4f}" if result.final_loss is not None else
        f"ray-ltx train: {config.training.training_type}, {result.steps} steps",
        f"  outputs:     {output_dir}",
    ]
    if config.training.training_type == "lora":
        lines.append(f"               {DIFFUSERS_WEIGHTS} (pipe.load_lora_weights('{output_dir}')), {COMFYUI_WEIGHTS}")
        lines.append("               each checkpoint's LoRA: <checkpoint>/lora, or `ray-ltx export OUTPUT_DIR --step N`")
    else:
        lines.append(f"               transformer/ (a diffusers folder: from_pretrained('{output_dir}/transformer'))")
    lines.append(f"  checkpoint:  {redact(result.checkpoint or '')}")
    workers = elastic.describe(result.workers)
    if workers:
        lines.append(f"  workers:     {workers}")
    if result.tracking:
        lines.append(f"  tracking:    {result.tracking}")
    if result.registered_model:
        lines.append(f"  registered:  {result.registered_model}")
    if result.memory:
        peak = max(result.memory, key=lambda r: r["max_memory_reserved"])
        final = result.memory[-1]
        lines.append(f"  memory:      peak {peak['max_memory_reserved']:.2f} GiB reserved ({peak['stage']}), final "
                     f"{final['memory_allocated']:.2f} GiB allocated (rank 0; every stage in memory.md)")
    lines.append("=" * 72)
    return "\n".join(lines)
