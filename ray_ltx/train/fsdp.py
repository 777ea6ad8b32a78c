"""torch FSDP2 (``fully_shard``): parameters, gradients and optimizer state sharded over the workers.

Every transformer block is one FSDP unit, all-gathered for its forward and backward and resharded
after; the root unit holds the rest (patchify, time and caption embeddings, output projection).
The order of preparation matters:

1. activation checkpointing wraps each block (torch's ``checkpoint_wrapper``), so the checkpointed
   region lies inside the FSDP unit and the recompute in the backward pass runs on parameters that
   FSDP all-gathered and cast exactly as for the forward (diffusers' ``enable_gradient_checkpointing``
   fails under FSDP mixed precision: "Recomputed values ... have different metadata");
2. ``torch.compile`` of each (wrapped) block, when asked;
3. ``fully_shard`` on each block, then on the root.

What sharding costs where it buys nothing is left out (:class:`FSDPOptions`): on one worker without
offload a block is not freed after its forward only to be copied back for its backward, gradients
with nothing to sum are not summed in fp32, and the optimizer steps the local shards as plain tensors.

Checkpoints go through ``torch.distributed.checkpoint`` (DCP): each rank writes its own shards, and
loading re-shards, so a checkpoint written by N workers resumes on M.
"""

from __future__ import annotations

import contextlib
import io
import math
import pickle
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.distributed.checkpoint import DefaultLoadPlanner, FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard
from torch.distributed.tensor import DTensor

from ray_ltx.config import Config
from ray_ltx.errors import CheckpointError
from ray_ltx.model.family import torch_dtype
from ray_ltx.train.engine import Engine, trainable_parameters
from ray_ltx.train.optim import build_optimizer, build_scheduler

SHARDS_DIR = "fsdp"  # inside a checkpoint: DCP's .metadata and one __<rank>_0.distcp per writing rank
SCHEDULER_FILE = "scheduler.pt"


@dataclass(frozen=True)
class FSDPOptions:
    """How the transformer is sharded and stepped. :meth:`for_run` is what ray-ltx trains with; other values exist
    for ``benchmarks/fsdp_probe.py`` to time against it."""

    reshard_after_forward: bool
    """Free each block's gathered parameters after its forward and gather them again for its backward: the memory
    that sharding saves. The last block never is (its backward follows right after the forward ends)."""
    reduce_dtype: torch.dtype | None
    """The dtype gradients are summed in (None: their own)."""
    cast_block_inputs: bool = False
    """Cast each block's floating inputs to the compute dtype (FSDP's default). Off, the blocks get what the root
    hands them, as on the unsharded path: they run under autocast, and the rotary embedding stays fp32."""
    compile_inside_checkpoint: bool = False
    """With checkpointing: compile the bare block and wrap the compiled block (checkpoint and FSDP hooks outside
    the compiled code, as on the unsharded path) instead of compiling the checkpoint-wrapped block."""
    local_optimizer_step: bool = True
    """Step the optimizer on each shard's local tensors (see :func:`_step_local_shards`)."""

    @classmethod
    def for_run(cls, config: Config, world_size: int) -> FSDPOptions:
        # One worker holding its whole model on the GPU: the "shard" is the parameter itself, so freeing the
        # gathered copy after the forward saves nothing that the backward would not copy back at once.
        alone = world_size == 1 and not config.distributed.offload_params
        # Gradients reduced in fp32 always: exact sums over workers and micro-batches (FSDP accumulates in the reduce
        # dtype), and on one H200 also the faster of the two at one worker and one pass (0.273 vs 0.289 s/step,
        # benchmarks/results/fsdp_probe_h200.json), where the bf16 setting only saves a copy.
        return cls(reshard_after_forward=not alone, reduce_dtype=torch.float32)


class FSDPEngine(Engine):
    """FSDP2 over all workers; LoRA (frozen and trainable parameters in one unit) or full finetune."""

    def __init__(self, model: nn.Module, config: Config, device: torch.device, world_size: int,
                 options: FSDPOptions | None = None):
        self.options = options or FSDPOptions.for_run(config, world_size)
        # Names before any wrapping (the checkpoint wrapper adds a prefix that DCP's state dicts strip again).
        self.names = [name for name, _ in trainable_parameters(model)]
        self.model = self.module = shard_transformer(model, config, device, world_size, self.options)
        self.device = device
        self.rank = dist.get_rank()
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.max_grad_norm = config.optimizer.max_grad_norm
        self.optimizer = build_optimizer(self.params, config, device)
        self.scheduler = build_scheduler(self.optimizer, config)
        lora = config.training.training_type == "lora"
        # LoRA checkpoints hold the adapter only: the frozen base comes from the pretrained model again.
        self._sharded = StateDictOptions(ignore_frozen_params=lora)
        self._loading = StateDictOptions(ignore_frozen_params=lora, strict=False)  # keys checked in load()

    @contextlib.contextmanager
    def accumulating(self, last: bool):
        # Between micro-batches, gradients stay unsharded and local (no reduce-scatter) and the parameters
        # stay gathered after backward (no second all-gather); the last micro-batch syncs and reshards.
        self.module.set_requires_gradient_sync(last)
        self.module.set_reshard_after_backward(last)
        yield

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> float:
        norm = self._clip_grad_norm()  # the global norm: every rank takes the same decision below
        if not math.isfinite(norm):  # an inf/nan gradient would turn every weight into nan: no update
            self.skip()
            return norm
        # Only torch's Adam/AdamW are known elementwise (bitsandbytes' 8-bit AdamW quantises state in blocks).
        if self.options.local_optimizer_step and isinstance(self.optimizer, (torch.optim.Adam, torch.optim.AdamW)):
            _step_local_shards(self.optimizer)
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm

    def skip(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()

    @torch.no_grad()  # DTensor.to_local outside autograd is an attribute read, not an autograd function per gradient
    def _clip_grad_norm(self) -> float:
        """The global gradient norm over all shards, gradients scaled down to ``max_grad_norm``.

        Reduced by hand over each rank's local shards, on the compute device: with CPU offload the
        shards are CPU tensors, which torch's DTensor-aware ``clip_grad_norm_`` would all-reduce on the
        NCCL group (no CPU backend there).
        """
        grads = [p.grad.to_local() for p in self.params if p.grad is not None]
        squares = torch.zeros((), dtype=torch.float32, device=self.device)
        if grads:
            norms = torch.nn.utils.get_total_norm(grads, norm_type=2.0)
            squares = norms.float().pow(2).to(self.device)
        dist.all_reduce(squares)
        norm = squares.sqrt()
        if grads and self.max_grad_norm > 0:
            scale = (self.max_grad_norm / (norm + 1e-6)).clamp(max=1.0).to(grads[0].device)
            torch._foreach_mul_(grads, scale)
        return float(norm)

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    @property
    def lr(self) -> float:
        return float(self.scheduler.get_last_lr()[0])

    def _state(self) -> dict[str, Any]:
        return {"model": get_model_state_dict(self.model, options=self._sharded),
                "optimizer": get_optimizer_state_dict(self.model, self.optimizer, options=self._sharded)}

    def save(self, directory: Path, rank: int) -> None:
        # Collective: every rank writes its shards, rank 0 also the metadata that maps them.
        dcp.save(self._state(), storage_writer=FileSystemWriter(directory / SHARDS_DIR))
        if rank == 0:  # the schedule is the same on every rank
            torch.save(self.scheduler.state_dict(), directory / SCHEDULER_FILE)

    def load(self, directory: Path) -> None:
        reader = _MetadataReader(directory / SHARDS_DIR)
        state = self._state()
        saved = {key.removeprefix("model.") for key in reader.read_metadata().state_dict_metadata
                 if key.startswith("model.")}
        missing, unexpected = sorted(set(state["model"]) - saved), sorted(saved - set(state["model"]))
        if missing or unexpected:
            raise CheckpointError(
                f"checkpoint {directory} does not match the model being trained: {len(missing)} trainable "
                f"weights missing (e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]})"
            )
        dcp.load(state, storage_reader=reader, planner=_PlainDataLoadPlanner())  # re-shards to this world size
        set_model_state_dict(self.model, state["model"], options=self._loading)
        set_optimizer_state_dict(self.model, self.optimizer, state["optimizer"], options=self._loading)
        self.scheduler.load_state_dict(torch.load(directory / SCHEDULER_FILE, weights_only=True))

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        # Collective all-gather; with cpu_offload only rank 0 keeps the tensors (on the CPU).
        options = StateDictOptions(full_state_dict=True, cpu_offload=True,
                                   ignore_frozen_params=self._sharded.ignore_frozen_params)
        state = get_model_state_dict(self.model, options=options)
        if self.rank != 0:
            return None
        return {name: state[name] for name in self.names}


def shard_transformer(model: nn.Module, config: Config, device: torch.device, world_size: int,
                      options: FSDPOptions | None = None) -> nn.Module:
    """Checkpoint-wrap, compile and ``fully_shard`` each transformer block, then shard the root (in place)."""
    training = config.training
    options = options or FSDPOptions.for_run(config, world_size)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    mesh = init_device_mesh(device.type, (world_size,))
    compute = torch_dtype(config.model.transformer_dtype)
    # Blocks compute in the configured dtype (LoRA's fp32 weights are cast for the forward, as autocast
    # would); gradients are summed in the options' reduce dtype (fp32 wherever anything is summed).
    root_policy = MixedPrecisionPolicy(param_dtype=compute, reduce_dtype=options.reduce_dtype)
    block_policy = MixedPrecisionPolicy(param_dtype=compute, reduce_dtype=options.reduce_dtype,
                                        cast_forward_inputs=options.cast_block_inputs)
    # CPU offload keeps parameters, gradients and the optimizer step on the CPU (FSDP2 offloads all three).
    offload = CPUOffloadPolicy(pin_memory=device.type == "cuda") if config.distributed.offload_params else OffloadPolicy()
    mode = None if training.compile_mode == "default" else training.compile_mode
    blocks = model.transformer_blocks
    for index, block in enumerate(blocks):
        if training.compile and (options.compile_inside_checkpoint or not training.gradient_checkpointing):
            block.compile(mode=mode)
        if training.gradient_checkpointing:
            block = blocks[index] = checkpoint_wrapper(block)
            if training.compile and not options.compile_inside_checkpoint:
                block.compile(mode=mode)
        last = index == len(blocks) - 1
        fully_shard(block, mesh=mesh, mp_policy=block_policy, offload_policy=offload,
                    reshard_after_forward=options.reshard_after_forward and not last)
    fully_shard(model, mesh=mesh, mp_policy=root_policy, offload_policy=offload)
    return model


@torch.no_grad()
def _step_local_shards(optimizer: torch.optim.Optimizer) -> None:
    """``optimizer.step()`` on the plain local tensors of the sharded parameters, gradients and optimizer state.

    A fused or foreach step over DTensors goes through DTensor's dispatch for every tensor of every list: tens of
    milliseconds of host time per step for the ~700 parameters of the 2B transformer, while the GPU waits (the
    step follows the gradient norm's host sync; pytorch/pytorch#134191). Sharding is elementwise for Adam, so the
    same step on the local shards is the same update. The optimizer keeps its DTensor state (what DCP saves and
    re-shards); the local tensors alias it, so the update lands there. A parameter without state yet (the first
    step) goes through the optimizer's own step, which creates it.
    """
    state = optimizer.state
    if any(p.grad is not None and not state.get(p) for group in optimizer.param_groups for p in group["params"]):
        optimizer.step()
        return
    params = [group["params"] for group in optimizer.param_groups]
    local_state: defaultdict[torch.Tensor, dict[str, Any]] = defaultdict(dict)
    stepped = []
    try:
        for group in optimizer.param_groups:
            shards = []
            for param in group["params"]:
                shard = param.to_local()
                if param.grad is not None:
                    shard.grad = param.grad.to_local()
                    stepped.append(shard)
                local_state[shard] = {key: value.to_local() if isinstance(value, DTensor) else value
                                      for key, value in state[param].items()}
                shards.append(shard)
            group["params"] = shards
        optimizer.state = local_state
        optimizer.step()
    finally:
        optimizer.state = state
        for group, group_params in zip(optimizer.param_groups, params, strict=True):
            group["params"] = group_params
        for shard in stepped:
            shard.grad = None


class _MetadataReader(FileSystemReader):
    """DCP's reader, with the checkpoint's ``.metadata`` unpickled through an allow-list.

    torch unpickles it without restriction: a checkpoint from elsewhere could run code on load.
    """

    def __init__(self, path: Path):
        super().__init__(path)
        self._metadata_path = Path(path) / ".metadata"

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        try:
            with open(self._metadata_path, "rb") as handle:
                metadata = _MetadataUnpickler(handle).load()
        except FileNotFoundError:
            raise CheckpointError(f"{self._metadata_path.parent} holds no FSDP checkpoint (no .metadata)") from None
        if not isinstance(metadata, Metadata):
            raise CheckpointError(f"{self._metadata_path} is not a torch.distributed.checkpoint metadata file")
        if metadata.storage_meta is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class _MetadataUnpickler(pickle.Unpickler):
    """Only the plain-data classes a DCP metadata file is made of (dataclasses, paths, sizes, dtypes)."""

    _ALLOWED = {
        "torch.distributed.checkpoint.metadata": {
            "Metadata", "MetadataIndex", "StorageMeta", "TensorProperties", "TensorStorageMetadata",
            "ChunkStorageMetadata", "BytesStorageMetadata", "_MEM_FORMAT_ENCODING",
        },
        "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
        "torch.serialization": {"_get_layout"},
        "torch": {"Size"},
        "pathlib": {"PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath"},
    }

    def find_class(self, module: str, name: str) -> Any:
        allowed = name in self._ALLOWED.get(module, ()) or (
            module == "torch" and isinstance(getattr(torch, name, None), torch.dtype))
        if not allowed:
            raise CheckpointError(f"refusing to load a checkpoint whose metadata names {module}.{name}: "
                                  "DCP metadata holds plain data only, so this file was not written by ray-ltx")
        return super().find_class(module, name)


class _PlainDataLoadPlanner(DefaultLoadPlanner):
    """DCP's planner unpickles non-tensor values (the optimizer's hyperparameters) with ``weights_only=False``;
    this one first checks that they unpickle as plain data."""

    def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
        torch.load(value, weights_only=True)  # raises on anything but tensors and plain containers
        value.seek(0)
        super().load_bytes(read_item, value)
