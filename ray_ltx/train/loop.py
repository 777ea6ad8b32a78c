"""The per-worker training loop that Ray Train runs on every worker.

Read top to bottom: load the transformer (never the VAE or text encoder), make it trainable (LoRA
or full), wrap it in the engine, restore the latest checkpoint, then for each optimizer step:
take this worker's micro-batches of the step from the data plan, drop captions, noise, forward, loss,
backward, step, log; every ``checkpointing_steps`` a checkpoint; at the end the exported weights. Everything
model-specific goes through the model family (:mod:`ray_ltx.model.family`).
"""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import ray.train
import torch
import torch.distributed as dist

from ray_ltx import faults, storage
from ray_ltx.config import Config
from ray_ltx.data.cache import LatentCache, read_empty_prompt
from ray_ltx.errors import OutOfMemoryError, TrainingDivergedError, UserError
from ray_ltx.logs import setup_logging
from ray_ltx.model.family import LatentSpec, ModelFamily, family_for, torch_dtype
from ray_ltx.model.flow import drop_captions, flow_matching_loss, heldout_loss
from ray_ltx.redaction import redact
from ray_ltx.train import checkpoint as ckpt
from ray_ltx.train import elastic, validation
from ray_ltx.train.data import MicroBatchReader, record_samples
from ray_ltx.train.engine import build_engine
from ray_ltx.train.memory import MEMORY_JSON, MEMORY_MD, MemoryReport
from ray_ltx.train.spec import WorkerSpec

log = logging.getLogger("ray_ltx.train")



def prepare_transformer(config: Config, family: ModelFamily, device: torch.device) -> tuple[torch.nn.Module, int]:
    """The transformer, trainable as configured; returns it and its trainable parameter count."""
    from ray_ltx.model.lora import add_lora

    compute = torch_dtype(config.model.transformer_dtype)
    full = config.training.training_type == "full-finetune"
    transformer = family.load_transformer(compute, "cpu")
    family.prepare_for_training(transformer)
    if "transformer" in config.model.layerwise_upcasting_modules:
        # Before LoRA injection, so only the frozen base layers are stored in float8.
        transformer.enable_layerwise_casting(storage_dtype=getattr(torch, config.model.layerwise_upcasting_storage_dtype),
                                             compute_dtype=compute)
    frozen = family.frozen_modules()
    if full:
        transformer.requires_grad_(True)
        if frozen:
            for name, param in transformer.named_parameters():
                param.requires_grad_(not re.fullmatch(frozen, name))
        count = sum(p.numel() for p in transformer.parameters() if p.requires_grad)
    else:
        count = add_lora(transformer, config, frozen)
    fsdp = config.distributed.backend == "fsdp"  # the FSDP engine checkpoint-wraps and compiles its blocks itself
    if config.training.gradient_checkpointing and not fsdp:
        transformer.enable_gradient_checkpointing()
    transformer.to(device)
    transformer.train()
    if config.training.compile and not fsdp:
        mode = None if config.training.compile_mode == "default" else config.training.compile_mode
        for block in family.transformer_blocks(transformer):
            block.compile(mode=mode)
    return transformer, count


def _micro_batch_generator(device: torch.device, seed: int, index: int) -> torch.Generator:
    """Noise, sigmas and caption dropout of a micro-batch depend only on (seed, its number in the plan): the same
    after a resume, and whichever worker of however many trains it."""
    return torch.Generator(device=device).manual_seed((seed * 1_000_003 + index * 7919) % (2**63))


def _all_reduce(values: list[float], device: torch.device, world: int) -> list[float]:
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    if world > 1:
        dist.all_reduce(tensor)
    return tensor.tolist()


class _Tracker:
    """Rank 0's side of the tracking run (metrics, validation videos), or nothing.

    Best effort: a tracking outage or a failing preview costs records (with a warning), never the training run.
    The tracker buffers and retries on its own; what still fails here is reported and dropped.
    """

    def __init__(self, spec: WorkerSpec, rank: int):
        self.run = None
        self.failures = 0
        if rank == 0 and spec.tracking:
            from ray_ltx import tracking

            self.run = self._safely("reattaching to the tracking run", tracking.attach, spec.tracking)

    def _safely(self, what: str, call, *args):
        try:
            return call(*args)
        except Exception as error:  # noqa: BLE001 - tracking must not end the run
            self.failures += 1
            if self.failures <= 3 or self.failures % 100 == 0:
                log.warning("tracking: %s failed (%s: %s); training goes on (%d tracking failure(s) so far)", what,
                            type(error).__name__, redact(str(error))[:300], self.failures)
            return None

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if self.run:
            self._safely(f"logging step {step}", self.run.log_metrics, step, metrics)

    def flush(self) -> None:
        """At each checkpoint: what a restart would not replay must be tracked already."""
        if self.run:
            self._safely("flushing metrics", self.run.flush)

    def log_videos(self, step: int, outputs: list, output_dir: str) -> None:
        """Copy validation videos to ``<output_dir>/validation/`` and log them, with their prompts, to the run."""
        from ray_ltx import storage

        for path, item in outputs:
            relative = f"validation/step_{step:06d}/{path.name}"
            self._safely(f"copying {relative}", storage.write_bytes, storage.join(output_dir, relative),
                         path.read_bytes())
            if self.run:
                self._safely(f"logging {relative}", self.run.log_video, step, f"validation/{path.stem}", path,
                             f"{item.prompt}\n{item.num_frames}x{item.height}x{item.width}")

    def close(self, spill_dir: Path) -> None:
        if self.run:
            self._safely("closing the tracking writer", self.run.close, spill_dir)


def _save_checkpoint(engine, state: ckpt.TrainState, rank: int, metrics: dict[str, Any], fault_plan: faults.FaultPlan,
                     lora: Any = None, export: Any = None) -> None:
    """Every rank writes its part to a fresh local folder, lists it last, then Ray persists it.

    A LoRA run also puts a loadable LoRA in every checkpoint (``lora/``: diffusers and ComfyUI files), so the
    weights of any step can be used, not only the last.
    """
    directory = Path(tempfile.mkdtemp(prefix=f"ray-ltx-ckpt-{state.step}-"))
    try:
        engine.save(directory, rank)
        wanted = export is not None or lora is not None
        weights = engine.full_state_dict() if wanted else None  # collective under ZeRO-3 and FSDP
        if rank == 0:
            ckpt.write_state(directory, state)
            if lora is not None:
                lora(directory / ckpt.LORA_DIR, weights)
            if export is not None:
                export(directory / ckpt.EXPORT_DIR, weights)
        if fault_plan.due(("checkpoint",), state.step, rank):
            faults.fire("kill", state.step)  # dies with a part written and no completion listing
        ckpt.mark_complete(directory, rank)
        checkpoint = ray.train.Checkpoint.from_directory(str(directory))
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=f"checkpoint_{state.step:08d}")
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _restore(engine, spec: WorkerSpec, config: Config, world: int) -> ckpt.TrainState | None:
    """Load the newest complete checkpoint that loads: of this run's storage folder, or the one asked to resume from.

    The storage folder is scanned rather than trusting ``ray.train.get_checkpoint()`` alone: a
    checkpoint every rank finished writing is usable even if the controller died (driver killed) or
    failed (a worker lost) before registering it, and the driver planned the data from the same scan.
    A checkpoint whose files pass the size check but fail to load (a corrupted byte) is marked damaged and
    the run stops with that message; the next resume starts from the checkpoint before it.
    """
    from ray_ltx.errors import CheckpointError

    # Newest first, and lazily: only the newest complete checkpoint is verified (each verification lists and reads
    # files, slow on object storage with many checkpoints kept); older ones only when the newest does not load.
    scan = ckpt.complete_checkpoints(spec.storage_dir)
    candidates = [found] if (found := next(scan, None)) else []
    if spec.resume_path:
        candidates.append((spec.resume_path, ckpt.verify(spec.resume_path)))
    candidates.sort(key=lambda item: item[1].step, reverse=True)
    if not candidates:
        return None
    if candidates[0][1].step < spec.plan_start_step:
        raise CheckpointError(f"the workers see no checkpoint of step {spec.plan_start_step} in "
                              f"{spec.storage_dir}: --storage_path must be storage every node reaches")
    path, state = candidates[0]
    ckpt.check_compatible(state, config, world, path)
    try:
        with ray.train.Checkpoint(path).as_directory() as directory:
            engine.load(Path(directory))
    except CheckpointError:
        raise
    except Exception as error:  # noqa: BLE001 - a damaged file: mark it so the next resume takes the one before
        reason = f"{type(error).__name__}: {error}"
        ckpt.mark_damaged(path, reason)
        previous = next((p for p, _ in [*candidates[1:], *scan] if p != path), None)
        raise CheckpointError(
            f"{path} did not load ({reason}); it is now marked damaged. Rerun with --resume_from_checkpoint latest to "
            f"continue from the checkpoint before it ({previous or 'none: the run starts over'})") from None
    return state


#: Written to the run's storage when a worker hits a deterministic error (see :func:`train_loop`).
FATAL = "fatal.json"

#: The knobs that lower training memory, for out-of-memory messages.
MEMORY_KNOBS = ("lower --batch_size (raise --gradient_accumulation_steps to keep the global batch), "
                "--gradient_checkpointing, --layerwise_upcasting_modules transformer (float8 frozen weights), "
                "--backend fsdp or --backend deepspeed --deepspeed_stage 3 with more GPUs (--num_workers), "
                "--offload_optimizer, and for validation --enable_tiling or smaller --validation_height/width")


def train_loop(loop_config: dict[str, WorkerSpec]) -> dict[str, Any]:
    """The train function of every worker; a deterministic failure ends the run without Ray Train's retries.

    Ray Train retries every worker error ``max_failures`` times, which helps against lost workers and nodes but
    only repeats a diverged loss, an out-of-memory setting or a damaged cache. Such an error is recorded in the
    run's storage before it propagates; a retried attempt finds it and returns it at once, and the driver
    raises it as the user's error.
    """
    spec: WorkerSpec = loop_config["spec"]
    fatal_path = storage.join(spec.storage_dir, FATAL)
    if storage.is_file(fatal_path):
        return {"fatal": json.loads(storage.read_text(fatal_path))}
    try:
        return _train(spec)
    except (UserError, torch.OutOfMemoryError) as error:
        record = _fatal_record(error)
        try:
            storage.write_text(fatal_path, json.dumps(record))
        except OSError:
            log.exception("could not record the fatal error in %s", fatal_path)
        if isinstance(error, torch.OutOfMemoryError):
            raise OutOfMemoryError(record["message"]) from error
        raise


def _fatal_record(error: BaseException) -> dict[str, str]:
    if isinstance(error, torch.OutOfMemoryError):
        rank = ray.train.get_context().get_world_rank()
        first_line = str(error).splitlines()[0] if str(error) else "out of memory"
        return {"type": "OutOfMemoryError",
                "message": f"out of memory on rank {rank} ({first_line}). The same settings would run out again; "
                           f"to use less memory: {MEMORY_KNOBS}. Then rerun with --resume_from_checkpoint latest"}
    return {"type": type(error).__name__, "message": str(error)}


def _train(run: WorkerSpec) -> dict[str, Any]:
    config = run.run_config
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    setup_logging()
    training, diffusion = config.training, config.diffusion
    compute = torch_dtype(config.model.transformer_dtype)
    torch.manual_seed(training.seed)

    memory = MemoryReport(device)
    family = family_for(config)
    transformer, trainable = prepare_transformer(config, family, device)
    engine = build_engine(transformer, config, device, world)
    state = _restore(engine, run, config, world) or ckpt.TrainState.for_config(config, world, trainable)
    state.trainable_parameters, state.world_size = trainable, world  # a checkpoint of another size may load here
    state.micro_batches_per_step = run.plan.micro_batches_per_step
    spec = LatentSpec.from_dict(run.latent_spec)
    empty_embeds, empty_mask = read_empty_prompt(run.cache_dir)
    empty_embeds, empty_mask = empty_embeds.to(device, compute), empty_mask.to(device)
    heldout = [b.to(device, compute) for b in run.heldout_batches]
    plan = run.plan
    loss_scale = plan.loss_scale(world)
    tracker = _Tracker(run, rank)
    inject_fault = faults.step_injector(run.faults, rank)  # None unless a drill planned a fault in these steps
    if rank == 0:
        log.info("rank 0 of %d on %s: %s, %s trainable parameters, starting at step %d of %d",
                 world, device, training.training_type, f"{trainable:,}", state.step, training.train_steps)
        log.info("%d workers share each step's %d micro-batches: %d passes each%s", world,
                 plan.micro_batches_per_step, plan.passes(world),
                 f", {plan.passes(world) * world - plan.micro_batches_per_step} of them padding"
                 if plan.micro_batches_per_step % world else "")

    reader = MicroBatchReader(plan, LatentCache.open(run.cache_dir), rank, world, state.step,
                              training.train_steps)

    def export(directory: Path, weights: dict[str, torch.Tensor] | None) -> None:
        _export(weights, config, family, engine.model, directory, memory)

    def checkpoint_lora(directory: Path, weights: dict[str, torch.Tensor] | None) -> None:
        _save_lora(weights, config, family, engine.model, directory)

    lora = checkpoint_lora if training.training_type == "lora" else None

    def evaluate() -> float | None:
        if not heldout:
            return None
        module = engine.model
        module.eval()
        with torch.autocast(device.type, dtype=compute, enabled=compute != torch.float32):
            value = sum(heldout_loss(family, module, b, spec, diffusion.frame_rate, training.seed, compute)
                        for b in heldout)
        module.train()
        return value / len(heldout)

    validating = validation.enabled(config)
    # Under ZeRO-3 and FSDP the weights are sharded, so every rank joins the forward passes; otherwise rank 0 alone.
    all_ranks_validate = config.distributed.backend == "fsdp" or (
        config.distributed.backend == "deepspeed" and config.distributed.deepspeed_stage == 3)

    validation_error: list[str | None] = [None]

    def validate(step: int) -> bool:
        """Render the validation videos; a failure (out of memory with the VAE loaded, an unreadable prompt
        file) is reported and ends validation for this run, never the training. Returns: validate again."""
        if rank != 0 and not all_ranks_validate:
            return True
        memory.record(f"before validation start (step {step})")
        try:
            outputs = validation.render_validation(engine.model, config, family, device, step,
                                                   Path(tempfile.mkdtemp()))
        except Exception as error:  # noqa: BLE001 - any failure here must not cost the run its weights
            validation_error[0] = f"validation at step {step} failed: {type(error).__name__}: {error}"
            log.warning("%s; training goes on without validation (the weights are saved as usual)",
                        validation_error[0])
            if device.type == "cuda":
                torch.cuda.empty_cache()
            return False
        memory.record(f"after validation end (step {step})")
        if rank == 0:
            tracker.log_videos(step, outputs, config.output_dir)
        for path, _ in outputs:
            shutil.rmtree(path.parent, ignore_errors=True)
        return True

    memory.record("before training start")
    epoch_seen = state.epoch
    progress = None
    if rank == 0:
        from ray_ltx.progress import Progress

        progress = Progress(training.train_steps, "step", "steps", logger=log, start=state.step,
                            bar=run.interactive, remote=True)
    group = elastic.GroupLog(run.journal, rank, world, state.step)
    while state.step < training.train_steps:
        step = state.step
        started = time.perf_counter()
        passes = reader.step(step)
        state.epoch = max(slot.epoch for slot, _ in passes)
        loss_sum, tokens, samples = 0.0, 0, 0
        for micro, (slot, batch) in enumerate(passes):
            generator = _micro_batch_generator(device, training.seed, slot.index)
            batch = batch.to(device, compute)
            batch = drop_captions(batch, empty_embeds, empty_mask, config.data.caption_dropout_p, generator)
            with engine.accumulating(micro == len(passes) - 1):
                with torch.autocast(device.type, dtype=compute, enabled=compute != torch.float32):
                    loss = flow_matching_loss(family, engine.module, batch, spec, diffusion, generator, compute,
                                              training.first_frame_conditioning_p)
                if inject_fault is not None and micro == 0:
                    loss = inject_fault(step, loss)
                # The mean over the step's micro-batches once the engine averages over the workers; a padding
                # pass (a worker with one micro-batch fewer) runs in step with the others and trains nothing.
                engine.backward(loss * (0.0 if slot.padding else loss_scale))
            if not slot.padding:
                loss_sum += float(loss.detach())
                tokens += batch.num_tokens
                samples += batch.latents.shape[0]
        total_loss, nonfinite, total_tokens, total_samples = _all_reduce(
            [loss_sum, 0.0 if math.isfinite(loss_sum) else 1.0, tokens, samples], device, world)
        grad_norm = math.nan
        if nonfinite:
            engine.skip()
        else:
            grad_norm = engine.step()  # a non-finite gradient norm skips the update (the weights stay clean)
        stepped = not nonfinite and math.isfinite(grad_norm)
        if not stepped:
            _handle_nonfinite(state, config, run.storage_dir, step, "loss" if nonfinite else "gradients", engine)
        state.step += 1
        group.step(state.step)
        if run.sample_log:
            record_samples(run.sample_log, state.step, rank, world, [slot for slot, _ in passes])
        done = state.step >= training.train_steps
        checkpoint_due = done or state.step % training.checkpointing_steps == 0
        report: dict[str, Any] = {"step": state.step, "skipped_steps": state.skipped_steps}
        if stepped:
            state.last_loss = total_loss / plan.micro_batches_per_step
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds = time.perf_counter() - started
            metrics = {
                "loss": state.last_loss, "lr": engine.lr, "grad_norm": grad_norm, "step_time_s": seconds,
                "samples_per_s": total_samples / seconds, "tokens_per_s": total_tokens / seconds,
                "epoch": state.epoch, "skipped_steps": state.skipped_steps, "world_size": world,
            }
            metrics.update(_process_health())
            if device.type == "cuda":
                metrics["gpu_memory_allocated_gib"] = torch.cuda.memory_allocated(device) / 2**30
                metrics["gpu_memory_reserved_gib"] = torch.cuda.max_memory_reserved(device) / 2**30
            if state.epoch != epoch_seen:
                if epoch_seen == 0:  # the first epoch's figure is what finetrainers reports; later ones repeat it
                    memory.record("after epoch 1")
                epoch_seen = state.epoch
            eval_every = config.validation.validation_loss_steps or training.checkpointing_steps
            if heldout and (state.step % eval_every == 0 or done):
                metrics["val_loss"] = evaluate()
            tracker.log(state.step, metrics)
            if progress is not None:
                progress.update(state.step, loss=round(state.last_loss, 4), lr=metrics["lr"],
                                grad_norm=round(grad_norm, 3), s_per_step=round(seconds, 3),
                                samples_per_s=round(metrics["samples_per_s"], 2))
            report = {"step": state.step, **{k: v for k, v in metrics.items() if v is not None}}
        if checkpoint_due:
            tracker.flush()
        # The final weights are saved before the last validation, so nothing that goes wrong there can lose them.
        if done:
            memory.record("after training end")
            _save_checkpoint(engine, state, rank, report, run.faults, lora=lora, export=export)
        elif checkpoint_due:
            _save_checkpoint(engine, state, rank, report, run.faults, lora=lora)
        elif "val_loss" in report:
            ray.train.report(report)
        if validating and (done or (config.validation.validation_steps and
                                    state.step % config.validation.validation_steps == 0)):
            validating = validate(state.step)
    reader.close()
    if progress is not None:
        progress.close()
    tracker.close(Path(run.scratch_dir))
    return {"step": state.step, "loss": state.last_loss, "trainable_parameters": trainable,
            "memory": memory.rows, "validation_error": validation_error[0]}


def _process_health() -> dict[str, float]:
    """Resident memory and open files of this worker: flat over a long run, or something leaks."""
    import os
    import resource

    with open("/proc/self/statm") as handle:
        rss = int(handle.read().split()[1]) * resource.getpagesize()
    return {"process_rss_gib": rss / 2**30, "open_files": float(len(os.listdir("/proc/self/fd")))}


def _handle_nonfinite(state: ckpt.TrainState, config: Config, storage_dir: str, step: int, what: str,
                      engine) -> None:
    """A step whose loss or gradients were not finite: skipped (the update was not applied) or the run stops."""
    training = config.training
    if training.nan_policy == "skip" and state.skipped_steps < training.max_skipped_steps and engine.can_skip:
        state.skipped_steps += 1
        log.warning("step %d: non-finite %s, step skipped, weights unchanged (%d/%d allowed)", step + 1, what,
                    state.skipped_steps, training.max_skipped_steps)
        return
    last_good = state.step - state.step % training.checkpointing_steps
    where = f"checkpoint_{last_good:08d}" if last_good else "no checkpoint yet"
    skip_hint = ("pass --nan_policy skip (up to --max_skipped_steps)" if engine.can_skip else
                 "a DeepSpeed step cannot be skipped once its gradients are in: use --backend ddp or fsdp to skip")
    raise TrainingDivergedError(
        f"non-finite {what} at step {step + 1} (after {state.skipped_steps} skipped steps); last good: {where} in "
        f"{storage_dir}. Lower --lr, raise --max_grad_norm protection, or {skip_hint}, and resume "
        "with --resume_from_checkpoint latest"
    )


def _save_lora(weights: dict[str, torch.Tensor] | None, config: Config, family: ModelFamily, model: torch.nn.Module,
               directory: Path) -> None:
    """The LoRA in the formats users load: diffusers' pytorch_lora_weights.safetensors and the ComfyUI copy."""
    from ray_ltx.model.lora import export_comfyui, save_diffusers_lora

    if weights is None:
        raise RuntimeError("rank 0 received no consolidated weights to export")
    directory.mkdir(parents=True, exist_ok=True)
    save_diffusers_lora(directory, model, weights, config, family)
    export_comfyui(directory, prefix=family.comfyui_prefix)


def _export(weights: dict[str, torch.Tensor] | None, config: Config, family: ModelFamily, model: torch.nn.Module,
            directory: Path, memory: MemoryReport) -> None:
    """rank 0: the final weights in the format users load, and the memory report."""
    directory.mkdir(parents=True, exist_ok=True)
    if weights is None:
        raise RuntimeError("rank 0 received no consolidated weights to export")
    if config.training.training_type == "lora":
        _save_lora(weights, config, family, model, directory)
    else:
        dtype = torch_dtype(config.model.transformer_dtype)
        transformer = family.load_transformer(dtype, "cpu")
        missing, unexpected = transformer.load_state_dict({k: v.to(dtype) for k, v in weights.items()}, strict=False)
        if unexpected:
            raise RuntimeError(f"unexpected weights in the finetuned state: {unexpected[:3]}")
        transformer.save_pretrained(directory / "transformer", safe_serialization=True)
    (directory / MEMORY_MD).write_text(memory.to_markdown() + "\n")
    (directory / MEMORY_JSON).write_text(memory.to_json())
