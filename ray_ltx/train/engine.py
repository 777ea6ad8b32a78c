"""The distribution engine: one small interface over plain DDP, DeepSpeed ZeRO and FSDP2 (``fsdp.py``).

The training loop reads the same for both::

    with engine.accumulating(last_micro_batch):
        engine.backward(loss / accumulation)
    grad_norm = engine.step()

An engine owns the wrapped model, the optimizer and the LR schedule, saves and loads its own
resumable state (each rank its part), and hands rank 0 the full trainable weights for export.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ray_ltx.config import Config
from ray_ltx.train.optim import build_optimizer, build_scheduler


def trainable_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(name, p) for name, p in model.named_parameters() if p.requires_grad]


class Engine:
    """What the loop needs from a distribution backend."""

    module: nn.Module  # call this for the forward pass
    model: nn.Module  # the unwrapped transformer

    def accumulating(self, last: bool) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        raise NotImplementedError

    def step(self) -> float:
        """Apply the accumulated gradients; returns the global gradient norm before clipping."""
        raise NotImplementedError

    #: Whether a step with non-finite gradients can be skipped before its update reaches the weights.
    can_skip = True

    def zero_grad(self) -> None:
        """Drop accumulated gradients without stepping."""
        raise NotImplementedError

    def skip(self) -> None:
        """A skipped step: no update, gradients dropped, the LR schedule moves on with the step count."""
        raise NotImplementedError

    @property
    def lr(self) -> float:
        raise NotImplementedError

    def save(self, directory: Path, rank: int) -> None:
        raise NotImplementedError

    def load(self, directory: Path) -> None:
        raise NotImplementedError

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        """Trainable weights by name, complete, on rank 0 (None on other ranks). Collective."""
        raise NotImplementedError


class DDPEngine(Engine):
    """torch DistributedDataParallel (or a single process), AdamW/Adam, torch LR schedule."""

    def __init__(self, model: nn.Module, config: Config, device: torch.device, world_size: int):
        self.model = model
        self.device = device
        self.params = [p for _, p in trainable_parameters(model)]
        self.max_grad_norm = config.optimizer.max_grad_norm
        if world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.module = DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None,
                gradient_as_bucket_view=True, static_graph=config.training.gradient_checkpointing,
            )
        else:
            self.module = model
        self.optimizer = build_optimizer(self.params, config, device)
        self.scheduler = build_scheduler(self.optimizer, config)

    def accumulating(self, last: bool) -> contextlib.AbstractContextManager:
        if last or not hasattr(self.module, "no_sync"):
            return contextlib.nullcontext()
        return self.module.no_sync()

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> float:
        limit = self.max_grad_norm if self.max_grad_norm > 0 else math.inf
        norm = float(torch.nn.utils.clip_grad_norm_(self.params, limit))
        if not math.isfinite(norm):  # an inf/nan gradient would turn every weight into nan: no update
            self.skip()
            return norm
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def skip(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()

    @property
    def lr(self) -> float:
        return float(self.scheduler.get_last_lr()[0])

    def save(self, directory: Path, rank: int) -> None:
        if rank != 0:  # DDP replicas are identical: rank 0 holds the whole state
            return
        from safetensors.torch import save_file

        weights = {name: p.detach().contiguous().cpu() for name, p in trainable_parameters(self.model)}
        save_file(weights, directory / "trainable.safetensors")
        torch.save(self.optimizer.state_dict(), directory / "optimizer.pt")
        torch.save(self.scheduler.state_dict(), directory / "scheduler.pt")

    def load(self, directory: Path) -> None:
        from safetensors.torch import load_file

        weights = load_file(directory / "trainable.safetensors", device=str(self.device))
        params = dict(trainable_parameters(self.model))
        missing = sorted(set(params) - set(weights))
        unexpected = sorted(set(weights) - set(params))
        if missing or unexpected:
            from ray_ltx.errors import CheckpointError

            raise CheckpointError(
                f"checkpoint {directory} does not match the model being trained: {len(missing)} trainable "
                f"weights missing (e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]})"
            )
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(weights[name])
        self.optimizer.load_state_dict(torch.load(directory / "optimizer.pt", map_location=self.device,
                                                  weights_only=True))
        self.scheduler.load_state_dict(torch.load(directory / "scheduler.pt", weights_only=True))

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        return {name: p.detach().cpu() for name, p in trainable_parameters(self.model)}


def _without_shm_op() -> None:
    """On CPU, DeepSpeed compiles a shared-memory all-reduce op with g++ at its first use (about 70 s, under a file
    lock that a killed build leaves behind: every later run then waits on it for ever). Gloo's own all-reduce is
    what ray-ltx's CPU runs (tests, smoke runs) need; GPU runs use NCCL and never build it."""
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


class DeepSpeedEngine(Engine):
    """DeepSpeed ZeRO stage 2 or 3, optional CPU offload of optimizer state and parameters."""

    TAG = "zero"

    def __init__(self, model: nn.Module, config: Config, device: torch.device, world_size: int):
        import deepspeed

        if device.type == "cpu":
            _without_shm_op()
        self.model = model
        self.device = device
        self.stage = config.distributed.deepspeed_stage
        trainable = [p for _, p in trainable_parameters(model)]
        optimizer = build_optimizer(trainable, config, device)
        scheduler = build_scheduler(optimizer, config)
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=deepspeed_config(config, world_size),
            dist_init_required=False,
        )
        from ray_ltx.train.deepspeed_checkpoint import read_checkpoints_safely

        read_checkpoints_safely(self.engine)  # DeepSpeed's own reader would unpickle anything a checkpoint holds
        self.module = self.engine
        self._norm = 0.0

    def backward(self, loss: torch.Tensor) -> None:
        # The loop already divides by the accumulation steps; DeepSpeed must not divide again.
        self.engine.backward(loss, scale_wrt_gas=False)
        boundary = self.engine.is_gradient_accumulation_boundary()
        self.engine.step()  # a no-op between boundaries; steps optimizer and schedule at one
        if boundary:
            norm = self.engine.get_global_grad_norm()
            self._norm = float(norm) if norm is not None else 0.0

    def step(self) -> float:
        return self._norm

    # DeepSpeed applies the update inside backward at the accumulation boundary: too late to skip it.
    can_skip = False

    def zero_grad(self) -> None:
        self.engine.zero_grad()

    def skip(self) -> None:
        self.engine.zero_grad()

    @property
    def lr(self) -> float:
        return float(self.engine.get_lr()[0])

    def save(self, directory: Path, rank: int) -> None:
        self.engine.save_checkpoint(str(directory), tag=self.TAG, save_latest=False)

    def load(self, directory: Path) -> None:
        path, _ = self.engine.load_checkpoint(str(directory), tag=self.TAG, load_optimizer_states=True,
                                              load_lr_scheduler_states=True)
        if path is None:
            from ray_ltx.errors import CheckpointError

            raise CheckpointError(f"DeepSpeed could not load the checkpoint in {directory}")

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        names = {name for name, _ in trainable_parameters(self.model)}
        if self.stage == 3:
            state = self.engine._zero3_consolidated_16bit_state_dict()  # collective; full dict on rank 0
            if state is None:
                return None
            return {k: v.detach().cpu() for k, v in state.items() if k in names}
        return {name: p.detach().cpu() for name, p in trainable_parameters(self.model)}


def deepspeed_config(config: Config, world_size: int) -> dict[str, Any]:
    dist, training = config.distributed, config.training
    zero: dict[str, Any] = {"stage": dist.deepspeed_stage, "overlap_comm": True, "contiguous_gradients": True}
    if dist.deepspeed_stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    if dist.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    if dist.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    dtype = config.model.transformer_dtype
    return {
        "train_micro_batch_size_per_gpu": training.batch_size,
        "gradient_accumulation_steps": training.gradient_accumulation_steps,
        "train_batch_size": training.batch_size * training.gradient_accumulation_steps * world_size,
        "gradient_clipping": config.optimizer.max_grad_norm,
        "zero_optimization": zero,
        "bf16": {"enabled": dtype == "bf16"},
        "fp16": {"enabled": dtype == "fp16"},
        "zero_allow_untested_optimizer": True,
        # ray-ltx builds the optimizer (torch AdamW or the one asked for); DeepSpeed otherwise refuses any but its
        # own CPU Adam under ZeRO-Offload. The optimizer step then runs on the CPU in torch.
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def build_engine(model: nn.Module, config: Config, device: torch.device, world_size: int) -> Engine:
    if config.distributed.backend == "deepspeed":
        return DeepSpeedEngine(model, config, device, world_size)
    if config.distributed.backend == "fsdp":
        from ray_ltx.train.fsdp import FSDPEngine

        return FSDPEngine(model, config, device, world_size)
    return DDPEngine(model, config, device, world_size)
