"""The driver of a training run: checks, cache, MLflow run, TorchTrainer, outputs, summary.

Runs wherever ``ray-ltx train`` runs (a laptop, a Ray head, a ``ray job submit`` entrypoint).
Workers never share a filesystem with it: they read the cache and write checkpoints through
``storage_path``; the final weights come back inside the last Ray checkpoint and the driver
copies them to ``output_dir``.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray_ltx import storage
from ray_ltx.config import Config
from ray_ltx.errors import (
    CheckpointError,
    OutputDirError,
    StorageFullError,
    TrainingDivergedError,
    UserError,
    is_disk_full,
)
from ray_ltx.train import checkpoint as ckpt
from ray_ltx.train import elastic, faults

if TYPE_CHECKING:
    from ray_ltx.train.data import DataPlan

log = logging.getLogger(__name__)

TRAINING_CONFIG = "training_config.json"
RESOLVED_CONFIG = "config.yaml"


@dataclass
class TrainResult:
    output_dir: str
    steps: int
    final_loss: float | None
    checkpoint: str | None
    mlflow_run_id: str | None
    tracking_uri: str | None
    training_config: dict[str, Any] = field(default_factory=dict)
    memory: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    workers: dict[str, Any] = field(default_factory=dict)  # elastic.Journal.record(): group sizes and restarts


class _Stopped(BaseException):
    """SIGTERM (``ray job stop``, a scheduler pre-empting the driver)."""


def storage_dir(config: Config) -> str:
    return storage.join(storage.absolute(config.storage_path), config.distributed.run_name)


def _checkpoint_dirs(run_dir: str) -> list[str]:
    return [storage.join(run_dir, name) for name in storage.list_dirs(run_dir) if name.startswith("checkpoint_")]


def read_state(path: str) -> ckpt.TrainState:
    """The state of a complete checkpoint (local: every rank's listing verified; remote: its state.json)."""
    if storage.is_uri(path):
        return ckpt.TrainState(**json.loads(storage.read_text(storage.join(path, ckpt.STATE))))
    return ckpt.verify(Path(path))


def latest_checkpoint(run_dir: str) -> tuple[str, ckpt.TrainState] | None:
    """The newest complete checkpoint of a run (incomplete ones, e.g. from a crash mid-save, are passed over)."""
    for path in reversed(_checkpoint_dirs(run_dir)):
        try:
            return path, read_state(path)
        except (CheckpointError, OSError, ValueError) as error:
            log.warning("passing over %s: %s", path, error)
    return None


def _prepare_output_dir(config: Config, run_dir: str) -> None:
    """Refuse to mix two runs in one output_dir unless asked to resume or overwrite."""
    output = storage.absolute(config.output_dir)
    previous = storage.is_file(storage.join(output, TRAINING_CONFIG)) or bool(_checkpoint_dirs(run_dir)) \
        or storage.is_file(storage.join(run_dir, "checkpoint_manager_snapshot.json"))
    if not previous:
        return
    if config.training.resume_from_checkpoint:
        return
    if config.training.overwrite_output_dir:
        log.warning("--overwrite_output_dir: removing the previous run in %s (the latent cache is kept)", output)
        storage.delete_dir(run_dir)
        for name in (TRAINING_CONFIG, RESOLVED_CONFIG, "pytorch_lora_weights.safetensors", "transformer",
                     "memory.md", "memory.json"):
            path = storage.join(output, name)
            if storage.is_dir(path):
                storage.delete_dir(path)
            elif storage.is_file(path):
                storage.delete_file(path)
        return
    raise OutputDirError(
        f"--output_dir {output} holds another training run (checkpoints in {run_dir}). Pass "
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
        found = latest_checkpoint(run_dir)
        if found is None:
            log.info("--resume_from_checkpoint latest: no checkpoint in %s yet, starting at step 0", run_dir)
            return None, 0
        path, state = found
    else:
        path = explicit = storage.absolute(wanted)
        state = read_state(path)
    ckpt.check_compatible(state, config, config.distributed.max_workers, path)
    log.info("resuming from %s (step %d)", path, state.step)
    return explicit, state.step


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


def build_trainer(config: Config, loop_config: dict[str, Any]):
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
        callbacks=loop_config.pop("callbacks", None),
    )
    return TorchTrainer(
        train_loop,
        train_loop_config=loop_config,
        scaling_config=scaling,
        run_config=run_config,
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo", timeout_s=dist.nccl_timeout),
    )


def _cluster_has_gpus() -> bool:
    from ray_ltx.cluster import cluster_gpus

    return cluster_gpus() > 0


def _copy_export(checkpoint_path: str, output_dir: str) -> None:
    source = storage.join(checkpoint_path, ckpt.EXPORT_DIR)
    if not storage.is_dir(source):
        raise CheckpointError(f"the final checkpoint {checkpoint_path} holds no exported weights")
    storage.copy_dir(source, output_dir)


def train(config: Config, *, callbacks: list | None = None, parent_run_id: str | None = None,
          run_name: str | None = None, quiet: bool = False) -> TrainResult:
    """Train as configured; returns where everything went. Raises UserError subclasses for the user's mistakes."""
    from ray_ltx import tracking
    from ray_ltx.cluster import cluster_shape, init_ray
    from ray_ltx.data.cache import LatentCache
    from ray_ltx.data.pipeline import ensure_cache
    from ray_ltx.train.data import DataPlan, split_holdout

    started = time.monotonic()
    config = config.resolved()
    output_dir = config.output_dir
    run_dir = storage_dir(config)
    _prepare_output_dir(config, run_dir)
    resume_path, start_step = _resume_point(config, run_dir)
    faults.check(os.environ.get("RAY_LTX_FAULT"))
    _check_model(config)
    uri = config.tracking_uri if tracking.enabled(config) else None
    if uri:
        tracking.check_reachable(uri)  # before any cluster or model work
    init_ray(config)

    run_id = None
    if uri:
        shape_info = cluster_shape()
        run_id = tracking.start_run(config, run_name=run_name, parent_run_id=parent_run_id, extra_params={
            "cluster.nodes": shape_info["nodes"], "cluster.gpus": shape_info["gpus"],
            "cluster.workers": config.to_dict()["distributed"]["num_workers"]})
        log.info("MLflow run %s in experiment %r at %s", run_id, config.tracking.tracker_name, tracking.redact(uri))

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
        storage.write_text(storage.join(output_dir, RESOLVED_CONFIG), config.to_yaml())
        result = _fit(config, cache, plan, held, start_step, resume_path, run_dir, run_id, uri, callbacks)
        steps, final_loss, checkpoint_path, trainable, memory, workers = result
        _copy_export(checkpoint_path, output_dir)
        block = training_config_block(config, trainable, plan)
        storage.write_text(storage.join(output_dir, TRAINING_CONFIG), json.dumps(block, indent=4))
        if uri and run_id:
            _log_outputs(config, uri, run_id, output_dir, cache, memory)
            elastic.log_to_mlflow(uri, run_id, workers)
            tracking.end_run(uri, run_id, "FINISHED")
    except (_Stopped, KeyboardInterrupt) as error:
        if uri and run_id:
            tracking.end_run(uri, run_id, "KILLED", error=f"stopped: {error or 'interrupted'}")
        raise
    except BaseException as error:
        if uri and run_id:
            tracking.end_run(uri, run_id, "FAILED", error=_describe_failure(error))
        user_error = _as_user_error(error)
        if user_error is error:
            raise
        if _in_chain(user_error, error):  # the user's error found inside Ray's wrappers: its message says it all
            raise user_error from None
        raise user_error from error
    finally:
        if _in_main_thread():
            signal.signal(signal.SIGTERM, previous_handler)

    outcome = TrainResult(output_dir, steps, final_loss, checkpoint_path, run_id, uri, block, memory,
                          round(time.monotonic() - started, 1), workers)
    if not quiet:
        print(format_summary(config, outcome))
    return outcome


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


def _fit(config, cache, plan: DataPlan, held, start_step, resume_path, run_dir, run_id, uri, callbacks):
    """Run the TorchTrainer; returns (steps, final loss, final checkpoint, trainable params, memory rows, the
    worker groups' record)."""
    from ray_ltx.train.data import holdout_batches

    training = config.training
    if start_step >= training.train_steps:
        found = latest_checkpoint(run_dir)
        if found is None:
            raise CheckpointError(f"nothing to resume in {run_dir}")
        path, state = found
        log.info("the run already reached step %d of %d; re-exporting from %s", state.step, training.train_steps, path)
        return state.step, state.last_loss, path, state.trainable_parameters, [], {}
    from ray_ltx.train.loop import FATAL

    stale = storage.join(run_dir, FATAL)
    if storage.is_file(stale):  # from an earlier attempt of this run; this one starts afresh
        storage.delete_file(stale)
    workers = config.to_dict()["distributed"]["num_workers"]
    log.info("training %d steps (from step %d) on %d samples in %d bucket(s): %d micro-batches per epoch, %s workers",
             training.train_steps, start_step, plan.samples, len(plan.per_bucket), plan.micro_batches_per_epoch, workers)
    journal = elastic.start_journal()
    loop_config = {
        "config": config.to_dict(),
        "cache_dir": cache.cache_dir,
        "latent_spec": cache.manifest.latent_spec,
        "plan": plan,
        "plan_start_step": start_step,
        "resume_path": resume_path,
        "heldout_batches": holdout_batches(cache, held) if held else [],
        "mlflow_run_id": run_id,
        "tracking_uri": uri,
        "system_metrics": config.tracking.log_system_metrics,
        "fault_dir": run_dir if not storage.is_uri(run_dir) else "/tmp/ray-ltx-faults",
        "storage_dir": run_dir,
        "fault": os.environ.get("RAY_LTX_FAULT"),
        "sample_log": os.environ.get("RAY_LTX_SAMPLE_LOG"),
        "journal": journal,
        "interactive": sys.stderr.isatty(),  # rank 0 draws a live bar on this terminal, else progress lines
        "callbacks": callbacks,
    }
    trainer = build_trainer(config, loop_config)
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
    return (value.get("step", training.train_steps), value.get("loss"), result.checkpoint.path,
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


def _log_outputs(config: Config, uri: str, run_id: str, output_dir: str, cache, memory: list[dict[str, Any]]) -> None:
    from ray_ltx import tracking

    local = Path(output_dir)
    weights = {"weights": local / "pytorch_lora_weights.safetensors"} if config.training.training_type == "lora" \
        else {"weights/transformer": local / "transformer"}
    tracking.log_artifacts(uri, run_id, {"": local / RESOLVED_CONFIG, "config": local / TRAINING_CONFIG, **weights,
                                         "memory": local / "memory.md"})
    if memory:
        tracking.log_table(uri, run_id, memory, "memory/memory_report.json")
    summary = cache.manifest.summary()
    tracking.client(uri).log_dict(run_id, summary, "cache/manifest_summary.json")


def format_summary(config: Config, result: TrainResult) -> str:
    lines = [
        "",
        "=" * 72,
        f"ray-ltx train: {config.training.training_type}, {result.steps} steps in {result.seconds:.0f} s, "
        f"final loss {result.final_loss:.4f}" if result.final_loss is not None else
        f"ray-ltx train: {config.training.training_type}, {result.steps} steps",
        f"  outputs:     {result.output_dir}",
    ]
    if config.training.training_type == "lora":
        lines.append(f"               pytorch_lora_weights.safetensors (pipe.load_lora_weights('{result.output_dir}')), "
                     "comfyui_lora_weights.safetensors")
        lines.append("               each checkpoint's LoRA: <checkpoint>/lora, or `ray-ltx export OUTPUT_DIR --step N`")
    else:
        lines.append(f"               transformer/ (a diffusers folder: from_pretrained('{result.output_dir}/transformer'))")
    lines.append(f"  checkpoint:  {result.checkpoint}")
    workers = elastic.describe(result.workers)
    if workers:
        lines.append(f"  workers:     {workers}")
    if result.mlflow_run_id:
        from ray_ltx import tracking

        lines.append(f"  MLflow run:  {result.mlflow_run_id} (experiment {config.tracking.tracker_name!r})")
        lines.append(f"  MLflow UI:   mlflow ui --backend-store-uri {tracking.redact(result.tracking_uri or '')}")
    if result.memory:
        peak = max(result.memory, key=lambda r: r["max_memory_reserved"])
        final = result.memory[-1]
        lines.append(f"  memory:      peak {peak['max_memory_reserved']:.2f} GiB reserved ({peak['stage']}), final "
                     f"{final['memory_allocated']:.2f} GiB allocated (rank 0; every stage in memory.md)")
    lines.append("=" * 72)
    return "\n".join(lines)
