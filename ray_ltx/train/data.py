"""The training data plan: bucket-homogeneous micro-batches in a seeded order, fed by Ray Data.

Ray Data has no bucket batching (its batches slice across blocks), so the driver plans the
micro-batches itself: each epoch shuffles the samples of every bucket (seed, epoch), cuts them
into micro-batches of ``batch_size`` (the last one topped up from the bucket's start so every
sample is seen and every batch is full), and shuffles the micro-batches. The plan is a
function of (seed, step), so a resumed run continues with exactly the micro-batches it would
have seen. Each plan row becomes one dataset row; a Ray Data map stage reads its samples from
the cache, and Ray Train splits the rows over the workers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from ray_ltx.data.cache import (
    LatentCache,
    extras_from_bytes,
    extras_to_bytes,
    read_samples,
    row_to_tensors,
    tensor_to_bytes,
)


@dataclass(frozen=True)
class PlanShape:
    """How many micro-batches one epoch holds and one optimizer step consumes."""

    micro_batches_per_epoch: int
    micro_batches_per_step: int  # accumulation steps x workers
    samples: int

    def epoch_of(self, step: int) -> int:
        return (step * self.micro_batches_per_step) // self.micro_batches_per_epoch

    @property
    def steps_per_epoch(self) -> float:
        return self.micro_batches_per_epoch / self.micro_batches_per_step

    def epochs(self, train_steps: int) -> int:
        return -(-train_steps * self.micro_batches_per_step // self.micro_batches_per_epoch)


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


def plan_shape(per_bucket: dict[str, list[str]], batch_size: int, accumulation: int, world_size: int) -> PlanShape:
    micro = sum(-(-len(ids) // batch_size) for ids in per_bucket.values())
    return PlanShape(micro, accumulation * world_size, sum(len(ids) for ids in per_bucket.values()))


def build_plan(
    cache: LatentCache,
    per_bucket: dict[str, list[str]],
    batch_size: int,
    accumulation: int,
    world_size: int,
    seed: int,
    start_step: int,
    train_steps: int,
) -> list[dict[str, Any]]:
    """Plan rows for steps [start_step, train_steps): one row per micro-batch, in consumption order."""
    shape = plan_shape(per_bucket, batch_size, accumulation, world_size)
    first = start_step * shape.micro_batches_per_step
    last = train_steps * shape.micro_batches_per_step
    rows = []
    epoch_cache: dict[int, list[tuple[str, list[str]]]] = {}
    for index in range(first, last):
        epoch, within = divmod(index, shape.micro_batches_per_epoch)
        if epoch not in epoch_cache:
            epoch_cache.clear()
            epoch_cache[epoch] = _epoch_micro_batches(per_bucket, batch_size, seed, epoch)
        bucket, ids = epoch_cache[epoch][within]
        step = index // shape.micro_batches_per_step
        rows.append({"step": step, "epoch": epoch, "bucket": bucket,
                     "refs": json.dumps([cache.ref(sid) for sid in ids])})
    return rows


def load_micro_batches(batch: dict[str, Any], cache_dir: str) -> dict[str, list[Any]]:
    """Ray Data map stage: plan rows -> stacked tensors of each micro-batch (as bytes + shape + dtype)."""
    import torch

    out: dict[str, list[Any]] = {key: [] for key in ("step", "epoch", "bucket", "latents", "latents_shape",
                                                     "latents_dtype", "prompt_embeds", "prompt_embeds_shape",
                                                     "prompt_embeds_dtype", "prompt_attention_mask", "mask_shape",
                                                     "extras")}
    for step, epoch, bucket, refs in zip(batch["step"], batch["epoch"], batch["bucket"], batch["refs"], strict=True):
        samples = [row_to_tensors(row) for row in read_samples(cache_dir, [tuple(r) for r in json.loads(refs)])]
        latents = torch.stack([s["latents"] for s in samples])
        embeds = torch.stack([s["prompt_embeds"] for s in samples])
        mask = torch.stack([s["prompt_attention_mask"] for s in samples])
        for key, tensor in (("latents", latents), ("prompt_embeds", embeds)):
            data, shape, dtype = tensor_to_bytes(tensor)
            out[key].append(data)
            out[f"{key}_shape"].append(shape)
            out[f"{key}_dtype"].append(dtype)
        out["prompt_attention_mask"].append(mask.numpy().astype(np.uint8).tobytes())
        out["mask_shape"].append(list(mask.shape))
        out["extras"].append(extras_to_bytes(stack_extras(samples)))
        out["step"].append(int(step))
        out["epoch"].append(int(epoch))
        out["bucket"].append(str(bucket))
    return out


def stack_extras(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """The samples' family extras stacked into batch tensors (every sample of a cache has the same keys)."""
    import torch

    return {key: torch.stack([s["extras"][key] for s in samples]) for key in samples[0]["extras"]}


def micro_batch_from_row(row: dict[str, Any]):
    """A row of the training dataset -> a :class:`~ray_ltx.model.family.Batch` on the CPU."""
    import torch

    from ray_ltx.data.cache import tensor_from_bytes
    from ray_ltx.model.family import Batch

    mask = np.frombuffer(row["prompt_attention_mask"], dtype=np.uint8).reshape(tuple(row["mask_shape"]))
    return Batch(
        tensor_from_bytes(row["latents"], row["latents_shape"], row["latents_dtype"]),
        tensor_from_bytes(row["prompt_embeds"], row["prompt_embeds_shape"], row["prompt_embeds_dtype"]),
        torch.from_numpy(mask.astype(bool)),
        extras_from_bytes(row.get("extras")),
    )


def training_dataset(cache: LatentCache, plan: list[dict[str, Any]], load_cpus: float = 0.25):
    import ray

    ds = ray.data.from_items(plan, override_num_blocks=max(1, min(len(plan), 64)))
    return ds.map_batches(load_micro_batches, batch_size=1, num_cpus=load_cpus,
                          fn_kwargs={"cache_dir": cache.cache_dir})


def holdout_batches(cache: LatentCache, held: list[str]) -> list[Any]:
    """Held-out samples grouped into one batch per bucket (read directly: a handful of samples)."""
    import torch

    from ray_ltx.model.family import Batch

    by_bucket: dict[str, list[str]] = {}
    bucket_of = {sid: shard.bucket for shard in cache.manifest.shards for sid in shard.sample_ids if sid}
    for sid in held:
        by_bucket.setdefault(bucket_of[sid], []).append(sid)
    batches = []
    for ids in by_bucket.values():
        samples = [row_to_tensors(row) for row in cache.read(ids)]
        batches.append(Batch(torch.stack([s["latents"] for s in samples]),
                             torch.stack([s["prompt_embeds"] for s in samples]),
                             torch.stack([s["prompt_attention_mask"] for s in samples]), stack_extras(samples)))
    return batches
