"""Resumable checkpoints: written by every rank, verified complete before anything loads them.

A checkpoint directory holds the engine's state (DDP: rank 0's trainable weights, optimizer and
schedule; DeepSpeed: each rank's ZeRO shards), ``state.json`` from rank 0 (step, epoch, what was
trained), and one ``complete-rank<R>.json`` per rank, written last, listing that rank's files and
sizes. A directory is taken for a checkpoint only if every rank's listing is there and every
listed file has its size: a crash mid-save (or mid-upload) leaves something resume refuses.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ray_ltx.config import RESIZABLE_BACKENDS, Config
from ray_ltx.errors import CheckpointError

STATE = "state.json"
COMPLETE = "complete-rank{rank}.json"
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


def verify(directory: Path) -> TrainState:
    """The checkpoint's state if it is complete; CheckpointError naming what is missing otherwise."""
    state_path = directory / STATE
    if not state_path.is_file():
        raise CheckpointError(f"{directory} is not a complete ray-ltx checkpoint (no {STATE})")
    try:
        state = TrainState(**json.loads(state_path.read_text()))
    except (json.JSONDecodeError, TypeError) as error:
        raise CheckpointError(f"{state_path}: unreadable ({error})") from None
    for rank in range(state.world_size):
        listing_path = directory / COMPLETE.format(rank=rank)
        if not listing_path.is_file():
            raise CheckpointError(f"{directory} is incomplete: rank {rank} never finished writing its part")
        listing = json.loads(listing_path.read_text())
        for name, size in listing["files"].items():
            path = directory / name
            if not path.is_file() or path.stat().st_size != size:
                raise CheckpointError(f"{directory} is incomplete: {name} is missing or truncated")
    return state


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
    if problems:
        raise CheckpointError(
            f"checkpoint {directory} was made with another configuration:\n  " + "\n  ".join(problems)
            + "\nResume with the settings it was made with, or start a new run in another --output_dir"
        )


def write_state(directory: Path, state: TrainState) -> None:
    (directory / STATE).write_text(json.dumps(asdict(state), indent=1))
