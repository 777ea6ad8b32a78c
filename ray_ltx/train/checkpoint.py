"""Resumable checkpoints: written by every rank, verified complete before anything loads them.

A checkpoint directory holds the engine's state (DDP: rank 0's trainable weights, optimizer and
schedule; DeepSpeed: each rank's ZeRO shards; FSDP: each rank's DCP shards, re-sharded on load),
``state.json`` from rank 0 (step, epoch, what was trained), and one ``complete-rank<R>.json`` per
rank, written last, listing that rank's files and sizes. A directory is taken for a checkpoint only
if every rank's listing is there and every listed file has its size: a crash mid-save (or mid-upload)
leaves something resume refuses.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ray_ltx import storage
from ray_ltx.config import RESIZABLE_BACKENDS, Config
from ray_ltx.errors import CheckpointError

log = logging.getLogger(__name__)

STATE = "state.json"
COMPLETE = "complete-rank{rank}.json"
DAMAGED = "damaged.json"  # written when a complete-looking checkpoint fails to load
LORA_DIR = "lora"  # a LoRA run's weights of this step, in the formats users load
EXPORT_DIR = "export"  # inside the final checkpoint: what the driver copies to output_dir


@dataclass
class TrainState:
    step: int = 0  # optimizer steps done
    epoch: int = 0
    seed: int = 0
    world_size: int = 1
    backend: str = "ddp"
    training_type: str = "lora"
    rank: int | None = None  # LoRA rank
    lora_alpha: float | None = None
    target_modules: list[str] | None = None
    trainable_parameters: int = 0
    last_loss: float | None = None
    skipped_steps: int = 0
    micro_batches_per_step: int = 0  # gradient_accumulation_steps x MAX workers (0: a checkpoint from before it)

    @classmethod
    def for_config(cls, config: Config, world_size: int, trainable_parameters: int) -> TrainState:
        lora = config.training.training_type == "lora"
        return cls(
            seed=config.training.seed, world_size=world_size, backend=config.distributed.backend,
            training_type=config.training.training_type,
            rank=config.training.rank if lora else None,
            lora_alpha=config.training.lora_alpha if lora else None,
            target_modules=list(config.training.target_modules) if lora else None,
            trainable_parameters=trainable_parameters,
            micro_batches_per_step=config.training.gradient_accumulation_steps * config.distributed.max_workers,
        )


def _files_below(directory: Path) -> dict[str, int]:
    return {
        str(path.relative_to(directory)): path.stat().st_size
        for path in sorted(directory.rglob("*"))
        if path.is_file() and not path.name.startswith("complete-rank")
    }


def mark_complete(directory: Path, rank: int) -> None:
    """Write this rank's listing of its own part last, after fsync-ing what it lists."""
    files = _files_below(directory)
    for name in files:
        fd = os.open(directory / name, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    tmp = directory / f".tmp-complete-rank{rank}.json"
    tmp.write_text(json.dumps({"rank": rank, "files": files}))
    os.replace(tmp, directory / COMPLETE.format(rank=rank))


def _sizes(directory: str) -> dict[str, int]:
    """Every file below ``directory`` (local or a URI) with its size, by relative path."""
    import pyarrow.fs as pafs

    fs, inner = storage.filesystem(directory)
    base = inner.rstrip("/")
    infos = fs.get_file_info(pafs.FileSelector(inner, recursive=True, allow_not_found=True))
    return {info.path[len(base) + 1:]: info.size for info in infos if info.type == pafs.FileType.File}


def verify(directory: str | Path) -> TrainState:
    """The checkpoint's state if it is complete; CheckpointError naming what is missing or damaged otherwise.

    The same check for local and remote (s3://, gs://) checkpoints: a half-uploaded one lacks a rank's listing
    or has a file of the wrong size, and is never taken for the latest.
    """
    directory = str(directory)
    sizes = _sizes(directory)
    if STATE not in sizes:
        raise CheckpointError(f"{directory} is not a complete ray-ltx checkpoint (no {STATE})")
    if DAMAGED in sizes:
        raise CheckpointError(f"{directory} is marked damaged: {storage.read_text(storage.join(directory, DAMAGED))}")
    state_path = storage.join(directory, STATE)
    try:
        state = TrainState(**json.loads(storage.read_text(state_path)))
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError) as error:
        raise CheckpointError(f"{state_path}: unreadable ({error})") from None
    for rank in range(state.world_size):
        name = COMPLETE.format(rank=rank)
        if name not in sizes:
            raise CheckpointError(f"{directory} is incomplete: rank {rank} never finished writing its part")
        try:
            listing = json.loads(storage.read_text(storage.join(directory, name)))
            files = dict(listing["files"])
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError):
            raise CheckpointError(f"{directory}: {name} is damaged (not the listing rank {rank} wrote)") from None
        for rel, size in files.items():
            if sizes.get(rel) != size:
                raise CheckpointError(f"{directory} is incomplete: {rel} is missing or truncated")
    return state


def mark_damaged(directory: str, reason: str) -> None:
    """Record that a checkpoint failed to load, so the scans pass it over from now on."""
    storage.write_text(storage.join(directory, DAMAGED), json.dumps(reason))


def checkpoint_dirs(run_dir: str) -> list[str]:
    """The ``checkpoint_<step>`` directories of a run's storage folder, oldest first."""
    return [storage.join(run_dir, name) for name in storage.list_dirs(run_dir) if name.startswith("checkpoint_")]


def complete_checkpoints(run_dir: str) -> Iterator[tuple[str, TrainState]]:
    """The run's complete checkpoints, newest first (incomplete ones, e.g. from a crash mid-save, passed over)."""
    for path in reversed(checkpoint_dirs(run_dir)):
        try:
            yield path, verify(path)
        except (CheckpointError, OSError, ValueError) as error:
            log.warning("passing over %s: %s", path, error)


def latest_checkpoint(run_dir: str) -> tuple[str, TrainState] | None:
    """The newest complete checkpoint of a run."""
    return next(complete_checkpoints(run_dir), None)


def check_compatible(state: TrainState, config: Config, world_size: int, directory: Any) -> None:
    """Refuse a checkpoint made with settings that change what is being trained."""
    expected = TrainState.for_config(config, world_size, state.trainable_parameters)
    problems = []
    for key in ("training_type", "rank", "lora_alpha", "target_modules", "backend"):
        if getattr(state, key) != getattr(expected, key):
            problems.append(f"{key}: checkpoint has {getattr(state, key)!r}, config has {getattr(expected, key)!r}")
    if state.backend not in RESIZABLE_BACKENDS and state.world_size != world_size:
        problems.append(f"workers: {state.backend} checkpoint of {state.world_size} workers (it loads only at that "
                        f"size), run has {world_size}")
    if state.micro_batches_per_step and state.micro_batches_per_step != expected.micro_batches_per_step:
        log.warning("checkpoint %s trained %d micro-batches per step (gradient_accumulation_steps x workers), this run "
                    "trains %d: the global batch changes from here on, and the rest of the epoch's samples are "
                    "regrouped into steps of the new size", directory, state.micro_batches_per_step,
                    expected.micro_batches_per_step)
    if problems:
        raise CheckpointError(
            f"checkpoint {directory} was made with another configuration:\n  " + "\n  ".join(problems)
            + "\nResume with the settings it was made with, or start a new run in another --output_dir"
        )


def write_state(directory: Path, state: TrainState) -> None:
    (directory / STATE).write_text(json.dumps(asdict(state), indent=1))
