"""The training data plan: bucket-homogeneous micro-batches in a seeded order, whatever the number of workers.

Ray Data has no bucket batching (its batches slice across blocks), so the plan is ray-ltx's own: each
epoch shuffles the samples of every bucket (seed, epoch), cuts them into micro-batches of ``batch_size``
(the last one topped up from the bucket's start so every sample is seen and every batch is full), and
shuffles the micro-batches. The epochs make one sequence of micro-batches, numbered from 0, and global
step ``s`` trains micro-batches ``s*G .. s*G+G-1``, ``G`` = gradient_accumulation_steps x the largest
number of workers, however many workers share it: worker ``r`` of ``w`` takes ``s*G + r + k*w`` (k = 0,
1, ...). When ``w`` does not divide ``G``, the workers with one micro-batch fewer make a padding pass
that trains nothing, so every worker makes the same number of passes (FSDP and ZeRO-3 gather weights in
every pass, in step). Everything is a function of (seed, step, rank, world size): a resumed or resized
run continues with exactly the micro-batches it would have trained, and trains each micro-batch of an
epoch once. Each worker reads its micro-batches from the latent cache itself, a few steps ahead, in a
background thread.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ray_ltx.data.cache import LatentCache, row_to_tensors


@dataclass(frozen=True)
class Slot:
    """One forward/backward pass of a worker in a step: a micro-batch of the plan, or a padding pass."""

    index: int  # the micro-batch's number in the run's sequence (a padding pass repeats the worker's first)
    epoch: int
    bucket: str
    sample_ids: tuple[str, ...]
    padding: bool = False  # trains nothing (its loss counts zero); keeps the workers' passes in step


@dataclass
class DataPlan:
    """Which micro-batches each optimizer step trains, and which of them each worker takes."""

    per_bucket: dict[str, list[str]]  # training sample ids per bucket
    batch_size: int
    micro_batches_per_step: int  # G: gradient_accumulation_steps x the largest number of workers
    seed: int
    _epochs: dict[int, list[tuple[str, list[str]]]] = field(default_factory=dict, repr=False, compare=False)

    @property
    def micro_batches_per_epoch(self) -> int:
        return sum(-(-len(ids) // self.batch_size) for ids in self.per_bucket.values())

    @property
    def samples(self) -> int:
        return sum(len(ids) for ids in self.per_bucket.values())

    def epoch_of(self, step: int) -> int:
        return (step * self.micro_batches_per_step) // self.micro_batches_per_epoch

    def epochs(self, train_steps: int) -> int:
        return -(-train_steps * self.micro_batches_per_step // self.micro_batches_per_epoch)

    def passes(self, world_size: int) -> int:
        """Forward/backward passes each of ``world_size`` workers makes per step."""
        return -(-self.micro_batches_per_step // world_size)

    def loss_scale(self, world_size: int) -> float:
        """What each pass's loss is multiplied by so that the gradients, averaged over the workers (DDP, FSDP and
        DeepSpeed average), are those of the mean loss over the step's micro-batches."""
        return world_size / self.micro_batches_per_step

    def slots(self, step: int, rank: int, world_size: int) -> list[Slot]:
        """Worker ``rank`` of ``world_size``'s passes in ``step``: micro-batches ``step*G + rank + k*world_size``."""
        first = step * self.micro_batches_per_step
        slots = []
        for k in range(self.passes(world_size)):
            within = rank + k * world_size
            if within < self.micro_batches_per_step:
                slots.append(self._slot(first + within))
            else:
                slots.append(replace(slots[0], padding=True))
        return slots

    def _slot(self, index: int) -> Slot:
        epoch, within = divmod(index, self.micro_batches_per_epoch)
        if epoch not in self._epochs:
            if len(self._epochs) > 1:
                self._epochs.pop(min(self._epochs))
            self._epochs[epoch] = _epoch_micro_batches(self.per_bucket, self.batch_size, self.seed, epoch)
        bucket, ids = self._epochs[epoch][within]
        return Slot(index, epoch, bucket, tuple(ids))


def split_holdout(cache: LatentCache, buckets: list[str], holdout: int) -> tuple[dict[str, list[str]], list[str]]:
    """Training sample ids per bucket, and the held-out ids (the same for every seed and trial)."""
    per_bucket = {b: sorted(cache.sample_ids(b)) for b in buckets}
    every = sorted((sid, b) for b, ids in per_bucket.items() for sid in ids)
    held = [sid for sid, _ in every[:holdout]] if holdout < len(every) else []
    held_set = set(held)
    train = {b: [sid for sid in ids if sid not in held_set] for b, ids in per_bucket.items()}
    return {b: ids for b, ids in train.items() if ids}, held


def _epoch_micro_batches(per_bucket: dict[str, list[str]], batch_size: int, seed: int, epoch: int) -> list[tuple[str, list[str]]]:
    rng = np.random.default_rng([seed, epoch])
    batches: list[tuple[str, list[str]]] = []
    for bucket in sorted(per_bucket):
        ids = list(per_bucket[bucket])
        rng.shuffle(ids)
        count = -(-len(ids) // batch_size)
        padded = [ids[i % len(ids)] for i in range(count * batch_size)]
        batches += [(bucket, padded[i * batch_size : (i + 1) * batch_size]) for i in range(count)]
    order = rng.permutation(len(batches))
    return [batches[i] for i in order]


def _stack(rows: list[dict[str, Any]]):
    """Cache rows of one bucket -> a :class:`~ray_ltx.model.family.Batch` on the CPU."""
    import torch

    from ray_ltx.model.family import Batch

    samples = [row_to_tensors(row) for row in rows]
    return Batch(torch.stack([s["latents"] for s in samples]), torch.stack([s["prompt_embeds"] for s in samples]),
                 torch.stack([s["prompt_attention_mask"] for s in samples]), stack_extras(samples))


def stack_extras(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """The samples' family extras stacked into batch tensors (every sample of a cache has the same keys)."""
    import torch

    return {key: torch.stack([s["extras"][key] for s in samples]) for key in samples[0]["extras"]}


class MicroBatchReader:
    """A worker's passes of steps ``first_step .. last_step-1`` with their batches, read from the cache by a
    background thread ``read_ahead`` steps ahead of training (parquet reads release the GIL)."""

    def __init__(self, plan: DataPlan, cache: LatentCache, rank: int, world_size: int, first_step: int,
                 last_step: int, read_ahead: int = 2):
        self._plan, self._cache, self._rank, self._world = plan, cache, rank, world_size
        self._steps = range(first_step, last_step)
        self._ready: queue.Queue = queue.Queue(maxsize=read_ahead)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, name="ray-ltx-reader", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for step in self._steps:
                slots = self._plan.slots(step, self._rank, self._world)
                real = [slot for slot in slots if not slot.padding]
                rows = iter(self._cache.read([sid for slot in real for sid in slot.sample_ids]))
                batches = {slot.index: _stack([next(rows) for _ in slot.sample_ids]) for slot in real}
                if not self._put((step, [(slot, batches[slot.index]) for slot in slots])):
                    return
        except BaseException as error:  # handed to the training thread, which raises it
            self._put((None, error))

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._ready.put(item, timeout=0.5)
                return True
            except queue.Full:
                continue
        return False

    def step(self, step: int) -> list[tuple[Slot, Any]]:
        """The (slot, batch) pairs of ``step``, in pass order; steps come in order."""
        got, items = self._ready.get()
        if got is None:
            raise items
        if got != step:
            raise RuntimeError(f"the reader is at step {got}, the loop at step {step}")
        return items

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def record_samples(directory: str, step: int, rank: int, world_size: int, slots: list[Slot]) -> None:
    """Append what one worker trained in one step to ``<directory>/samples-rank<R>.jsonl`` (``RAY_LTX_SAMPLE_LOG``:
    drills and tests check that each micro-batch of an epoch was trained once, whatever the resizes)."""
    from pathlib import Path

    real = [slot for slot in slots if not slot.padding]
    line = json.dumps({"time": time.time(), "step": step, "rank": rank, "world_size": world_size, "pid": os.getpid(),
                       "micro_batches": [slot.index for slot in real], "epochs": [slot.epoch for slot in real],
                       "samples": [sid for slot in real for sid in slot.sample_ids],
                       "padding_passes": len(slots) - len(real)})
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    with open(path / f"samples-rank{rank}.jsonl", "a", encoding="utf-8") as handle:
        handle.write(line + "\n")


def holdout_batches(cache: LatentCache, held: list[str]) -> list[Any]:
    """Held-out samples grouped into one batch per bucket (read directly: a handful of samples)."""
    by_bucket: dict[str, list[str]] = {}
    bucket_of = {sid: shard.bucket for shard in cache.manifest.shards for sid in shard.sample_ids if sid}
    for sid in held:
        by_bucket.setdefault(bucket_of[sid], []).append(sid)
    return [_stack(cache.read(ids)) for ids in by_bucket.values()]
