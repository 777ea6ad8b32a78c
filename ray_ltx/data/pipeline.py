"""Preprocessing with Ray Data: dataset -> decoded, bucketed clips -> VAE/T5 encodings -> latent cache.

The stream, all of it lazy and bounded in memory::

    records (driver) -> decode_clips (CPU tasks, ray_ltx.data.decode: probe, bucket, sample, resize+crop)
                     -> VaeEncoder (actors, GPU when present) -> PromptEncoder (actors)
                     -> write_shards (tasks: parquet shards, atomic) -> small result rows (driver)

The driver only lists the dataset and collects result rows; frames and latents never pass
through it. Samples already in complete shards are not encoded again, so an interrupted run
resumes where it stopped.
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from typing import Any

import numpy as np

from ray_ltx import faults, locks, storage
from ray_ltx.config import Config
from ray_ltx.data import cache as cache_lib
from ray_ltx.data.decode import OK, PROMPT_ONLY, decode_clips
from ray_ltx.data.sources import Record, Skip, dataset_given, dataset_name, read_records
from ray_ltx.errors import CacheError, DatasetError, StorageFullError, is_disk_full
from ray_ltx.redaction import redact

log = logging.getLogger(__name__)

EMPTY_PROMPT_ID = "__empty_prompt__"
PROGRESS_SECONDS = 10.0


# -- stage 4: write shards (tasks) ---------------------------------------------------------------

RESULT_KEYS = ("kind", "path", "bucket", "sample_ids", "reason", "detail", "truncated", "latent_spec", "size")


def write_shards(batch: dict[str, Any], cache_dir: str, digest: str,
                 fault: faults.FaultPlan | None = None) -> dict[str, list[Any]]:
    """Write the encoded rows of a batch as one shard per bucket; report shards and skips.

    A task killed mid-write leaves only a temporary file; Ray Data retries the task and the
    driver keeps each sample once.
    """
    results: list[dict[str, Any]] = []
    by_bucket: dict[str, list[dict[str, Any]]] = defaultdict(list)
    spec = ""
    for i, status in enumerate(batch["status"]):
        if status == OK:
            row = {name: batch[name][i] for name in cache_lib.SHARD_SCHEMA.names}
            row["latents_shape"] = [int(x) for x in row["latents_shape"]]
            row["prompt_embeds_shape"] = [int(x) for x in row["prompt_embeds_shape"]]
            by_bucket[row["bucket"]].append(row)
            spec = batch["latent_spec"][i]
        elif status == PROMPT_ONLY:
            embeds = cache_lib.tensor_from_bytes(batch["prompt_embeds"][i], batch["prompt_embeds_shape"][i],
                                                 batch["prompt_embeds_dtype"][i])
            mask = np.frombuffer(batch["prompt_attention_mask"][i], dtype=np.uint8).astype(bool)
            import torch

            cache_lib.write_empty_prompt(cache_dir, embeds, torch.from_numpy(mask.copy()))
            results.append({"kind": "empty_prompt"})
        else:
            results.append({"kind": "skip", "path": batch["rel_path"][i], "reason": status,
                            "detail": batch["detail"][i]})
    for bucket, rows in by_bucket.items():
        if fault and fault.due(("shard",), 0, 0):
            partial = storage.join(cache_dir, cache_lib.SHARDS, bucket, ".tmp-killed-mid-write.parquet")
            storage.write_bytes(partial, b"PAR1 half a shard")
            faults.fire("kill", 0)
        info = cache_lib.write_shard(cache_dir, bucket, rows, digest, spec)
        results.append({"kind": "shard", "path": info.path, "bucket": bucket,
                        "sample_ids": json.dumps(info.sample_ids), "truncated": info.truncated,
                        "latent_spec": spec, "size": info.size})
    defaults = {"path": "", "bucket": "", "sample_ids": "[]", "reason": "", "detail": "", "truncated": 0,
                "latent_spec": "", "size": 0}
    rows = [{**defaults, **r} for r in results] or [{**defaults, "kind": "none"}]
    return {key: [row[key] for row in rows] for key in RESULT_KEYS}


# -- the driver ----------------------------------------------------------------------------------


def _read_manifest_or_rebuild(config: Config, cache_dir: str) -> cache_lib.Manifest | None:
    """The cache's manifest; a damaged one is an error that says how to recover, or with --rebuild_cache, nothing."""
    try:
        return cache_lib.read_manifest(cache_dir)
    except CacheError as error:
        if not config.data.rebuild_cache:
            raise
        log.warning("%s: rebuilding the cache", error)
        return None


def _readable_shards(cache_dir: str) -> list[cache_lib.ShardHeader]:
    """Headers of the shards on storage; a damaged shard (truncated, foreign) is deleted with a warning so its
    samples are encoded again (shards are written whole, so a damaged one is nobody's good data)."""
    headers = []
    for rel in cache_lib.existing_shards(cache_dir):
        try:
            headers.append(cache_lib.read_shard_header(cache_dir, rel))
        except Exception as error:  # noqa: BLE001 - pyarrow raises ArrowInvalid, OSError, ...: all mean damaged
            log.warning("passing over the damaged cache shard %s (%s: %s); its samples are encoded again",
                        redact(storage.join(cache_dir, rel)), type(error).__name__, error)
            storage.delete_file(storage.join(cache_dir, rel))
    return headers


def _check_fingerprint(config: Config, cache_dir: str, fp: dict[str, Any], existing: cache_lib.Manifest | None,
                       headers: list[cache_lib.ShardHeader], digest: str) -> None:
    """Refuse (or, with --rebuild_cache, clear) a cache made for something else."""
    problems: list[str] = []
    if existing is not None and existing.fingerprint != fp:
        problems = cache_lib.describe_mismatch(fp, existing.fingerprint)
    elif any(h.digest != digest for h in headers):
        problems = ["shards on disk were made with another model, text encoder or preprocessing settings"]
    if not problems:
        return
    if not config.data.rebuild_cache:
        raise CacheError(
            f"the latent cache in {redact(cache_dir)} was built for something else:\n  " + "\n  ".join(problems)
            + "\nPass --rebuild_cache to rebuild it, or --cache_dir to use another location"
        )
    log.warning("rebuilding the latent cache in %s (%s)", redact(cache_dir), "; ".join(problems))
    # Only the cache's own names: a --cache_dir that also holds other files keeps them.
    storage.delete_dir(storage.join(cache_dir, cache_lib.SHARDS))
    for name in (cache_lib.MANIFEST, cache_lib.EMPTY_PROMPT):
        storage.delete_file(storage.join(cache_dir, name))
    headers.clear()


def _reuse(records: list[Record], headers: list[cache_lib.ShardHeader]) -> tuple[list[cache_lib.ShardInfo], set[str]]:
    """Shards worth keeping (with rows of samples no longer in the dataset, or repeated, blanked)."""
    wanted = {r.sample_id for r in records}
    seen: set[str] = set()
    shards = []
    for header in headers:
        ids: list[str | None] = []
        for sid in header.info.sample_ids:
            keep = sid in wanted and sid not in seen
            ids.append(sid if keep else None)
            if keep:
                seen.add(sid)
        if any(ids):
            shards.append(cache_lib.ShardInfo(header.info.path, header.info.bucket, ids, header.info.truncated,
                                              header.info.size))
    return shards, seen


def encoder_layout(actors: int | None, gpus_per_actor: float | None, cluster_gpus: float) -> tuple[float, int]:
    """(GPUs per encoder actor, actors per encoder stage) from the config and the cluster's GPUs.

    Defaults on a GPU cluster: a quarter GPU per actor and two actors per stage per GPU, so each GPU holds
    two VAE and two T5 actors: one pair computes while the other waits for decoded clips (measured 1.6x
    the throughput of one pair per GPU, docs/performance.md).
    """
    if gpus_per_actor is None:
        gpus_per_actor = 0.25 if cluster_gpus else 0.0
    if actors is None:  # as many VAE + T5 pairs as the cluster's GPUs hold
        actors = max(1, int(cluster_gpus / (2 * gpus_per_actor) + 1e-9)) if gpus_per_actor else 1
    if gpus_per_actor and 2 * actors * gpus_per_actor > cluster_gpus + 1e-9:
        # An autoscaling cluster may still add GPU nodes; otherwise Ray Data waits for GPUs that never come.
        log.warning("encoding asks for %g GPUs (%d VAE + %d T5 actors x %g GPU) and the cluster has %g now; "
                    "lower --encode_actors or --encode_gpus unless GPU nodes are on their way",
                    2 * actors * gpus_per_actor, actors, actors, gpus_per_actor, cluster_gpus)
    return gpus_per_actor, actors


def decode_settings(config: Config, audio_sample_rate: int | None) -> dict[str, Any]:
    """What :func:`ray_ltx.data.decode.decode_one` needs of the config (shipped with every decode task)."""
    data = config.data
    return {"frame_sampling": data.frame_sampling, "sample_fps": data.sample_fps, "frame_stride": data.frame_stride,
            "audio": data.audio, "audio_sample_rate": audio_sample_rate}


def _clip_rows(records: list[Record]) -> list[dict[str, Any]]:
    """The stream's first rows: one per clip to decode."""
    return [{**r.to_row(), "status": OK} for r in records]


def _items(rows: list[dict[str, Any]]):
    """The rows as a Ray Data dataset, in up to 200 blocks (one row each for small runs)."""
    import ray

    return ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows), 200)))


def _decoded(ds, config: Config, audio_sample_rate: int | None):
    return ds.map_batches(
        decode_clips, batch_size=1, num_cpus=config.data.decode_cpus,
        fn_kwargs={"buckets": [str(b) for b in config.data.video_resolution_buckets],
                   "data": decode_settings(config, audio_sample_rate)},
    )


def _ray_data_stream(config: Config, rows: list[dict[str, Any]], cache_dir: str, digest: str,
                     audio_sample_rate: int | None):
    """Decode -> VAE -> text encoder -> shards; without clips (only the empty prompt left) the text encoder alone."""
    import ray

    from ray_ltx.cluster import cluster_gpus
    from ray_ltx.data.encode import PromptEncoder, VaeEncoder  # here: the shard writers import this module, no torch

    data = config.data
    clips = any(row["status"] == OK for row in rows)
    gpus, actors = encoder_layout(data.encode_actors, data.encode_gpus, cluster_gpus())
    log.info("encoding with %s%d T5 actor(s), %s GPU each", f"{actors} VAE and " if clips else "", actors,
             gpus or "no")
    config_dict = config.to_dict()
    ds = _items(rows)
    actor_kwargs: dict[str, Any] = {"num_gpus": gpus} if gpus else {"num_cpus": 1}
    if clips:
        ds = _decoded(ds, config, audio_sample_rate)
        ds = ds.map_batches(VaeEncoder, batch_size=data.encode_batch_size,
                            fn_constructor_kwargs={"config": config_dict},
                            compute=ray.data.ActorPoolStrategy(size=actors), **actor_kwargs)
    ds = ds.map_batches(PromptEncoder, batch_size=data.encode_batch_size,
                        fn_constructor_kwargs={"config": config_dict},
                        compute=ray.data.ActorPoolStrategy(size=actors), **actor_kwargs)
    ds = ds.map_batches(write_shards, batch_size=data.encode_batch_size, num_cpus=0.5,
                        fn_kwargs={"cache_dir": cache_dir, "digest": digest,
                                   "fault": faults.FaultPlan.from_env(cache_dir)})
    return ds


def _skipped_again(config: Config, todo: list[Record], audio_sample_rate: int | None) -> tuple[list[Record], list[Skip]]:
    """Decode clips that the last run skipped, with no model loaded: (those that decode now, those skipped again).

    A file may have been replaced or the buckets changed since, so the clips are decoded again, but a rerun whose
    only clips left are these loads no VAE or text encoder to learn that they are still unusable.
    """
    ds = _decoded(_items(_clip_rows(todo)), config, audio_sample_rate).select_columns(
        ["sample_id", "rel_path", "status", "detail"])
    usable: set[str] = set()
    skips = []
    for batch in ds.iter_batches(batch_size=None):
        for sid, rel, status, detail in zip(batch["sample_id"], batch["rel_path"], batch["status"], batch["detail"],
                                            strict=True):
            if status == OK:
                usable.add(sid)
            else:
                skips.append(Skip(rel, status, detail))
    return [r for r in todo if r.sample_id in usable], skips


def _encoded_batches(config: Config, rows: list[dict[str, Any]], cache_dir: str, digest: str,
                     audio_sample_rate: int | None):
    """The result rows of the stream; a full disk becomes a StorageFullError that says what to do."""
    try:
        yield from _ray_data_stream(config, rows, cache_dir, digest, audio_sample_rate).iter_batches(batch_size=None)
    except Exception as error:
        if is_disk_full(error):
            raise StorageFullError(
                f"no space left while writing the latent cache to {redact(cache_dir)}. Free space there or pass --cache_dir "
                "on a larger volume, then rerun: complete shards are kept and only the rest is encoded (no manifest "
                "was written, so nothing reads the incomplete cache)") from None
        raise


def preprocess(config: Config) -> cache_lib.Manifest:
    """Build (or complete) the latent cache for ``config`` and return its manifest.

    Holds the cache's lock meanwhile: a second preprocessing of the same cache stops with an error naming this one.
    """
    config = config.resolved()
    with locks.exclusive(config.cache_dir, "cache", CacheError):
        return _preprocess(config)


def _start_ray(config: Config) -> None:
    """Start or join Ray, with one progress display (ours: a bar on a terminal, lines with an ETA in logs) instead
    of Ray Data's operator dumps."""
    import ray.data

    from ray_ltx.cluster import init_ray

    init_ray(config)
    ray.data.DataContext.get_current().enable_progress_bars = False


def _preprocess(config: Config) -> cache_lib.Manifest:
    from ray_ltx.model.family import family_for

    started = time.monotonic()
    cache_dir = config.cache_dir
    records, listing_skips, layout = read_records(config)
    family = family_for(config)
    family.check_training()
    fp = cache_lib.fingerprint(config, family)
    digest = cache_lib.fingerprint_digest(fp)
    existing = _read_manifest_or_rebuild(config, cache_dir)
    headers = _readable_shards(cache_dir)
    _check_fingerprint(config, cache_dir, fp, existing, headers, digest)
    shards, done = _reuse(records, headers)
    spec = next((h.latent_spec for h in headers if h.latent_spec), None)
    todo = [r for r in records if r.sample_id not in done]
    need_empty = not storage.is_file(storage.join(cache_dir, cache_lib.EMPTY_PROMPT))
    log.info("preprocess: %d clips listed (%s layout) in %s; %d already cached, %d to encode; cache: %s",
             len(records), layout, redact(dataset_name(config)), len(done), len(todo), redact(cache_dir))

    skipped = [s.to_row() for s in listing_skips]
    encoded = 0
    audio_rate = family.audio_sample_rate() if config.data.audio != "off" else None
    skipped_before = {s["path"] for s in existing.skipped} if existing and existing.fingerprint == fp else set()
    if todo and all(r.rel_path in skipped_before for r in todo):
        log.info("preprocess: the %d clip(s) left were skipped by the last run: decoding them again before loading "
                 "any model", len(todo))
        _start_ray(config)
        todo, again = _skipped_again(config, todo, audio_rate)
        skipped += [skip.to_row() for skip in again]
    models = ["VAE", "text encoder"] if todo else ["text encoder"] if need_empty else []
    if models:
        _start_ray(config)
        rows = _clip_rows(todo)
        if need_empty:
            rows.append({"sample_id": EMPTY_PROMPT_ID, "caption": "", "path": "", "rel_path": "", "where": "",
                         "buckets": "", "status": PROMPT_ONLY})
        from ray_ltx.progress import Progress

        progress = Progress(len(todo), "preprocess: clip", "clips", logger=log, every_s=PROGRESS_SECONDS)
        stream_skips = 0
        for batch in _encoded_batches(config, rows, cache_dir, digest, audio_rate):
            for i, kind in enumerate(batch["kind"]):
                if kind == "shard":
                    ids = json.loads(batch["sample_ids"][i])
                    shards.append(cache_lib.ShardInfo(batch["path"][i], batch["bucket"][i], ids,
                                                      int(batch["truncated"][i]), int(batch["size"][i])))
                    spec = spec or batch["latent_spec"][i]
                    encoded += len(ids)
                elif kind == "skip":
                    skipped.append(Skip(batch["path"][i], batch["reason"][i], batch["detail"][i]).to_row())
                    stream_skips += 1
            done_now = encoded + stream_skips
            elapsed = time.monotonic() - started
            progress.update(min(done_now, len(todo)), encoded=encoded, skipped=stream_skips,
                            clips_per_s=round(done_now / elapsed, 2) if elapsed > 0 else None)
        progress.close()

    shards = _dedupe(shards)
    manifest = cache_lib.Manifest(
        fingerprint=fp, latent_spec=json.loads(spec) if spec else {}, layout=layout,
        buckets=[str(b) for b in config.data.video_resolution_buckets], shards=shards, skipped=skipped,
        stats={"listed": len(records), "reused": len(done), "encoded": encoded,
               "seconds": round(time.monotonic() - started, 2)},
    )
    if manifest.num_samples == 0:
        raise DatasetError(_nothing_survived(config, manifest))
    cache_lib.write_manifest(cache_dir, manifest)
    print(format_summary(manifest, cache_dir, models))
    return manifest


def _dedupe(shards: list[cache_lib.ShardInfo]) -> list[cache_lib.ShardInfo]:
    """A sample written twice (a retried write task) is used once: the first shard keeps it."""
    seen: set[str] = set()
    out = []
    for shard in sorted(shards, key=lambda s: s.path):
        ids: list[str | None] = []
        for sid in shard.sample_ids:
            ids.append(sid if sid is not None and sid not in seen else None)
            if sid is not None:
                seen.add(sid)
        if any(ids):
            out.append(cache_lib.ShardInfo(shard.path, shard.bucket, ids, shard.truncated, shard.size))
    return out


def _nothing_survived(config: Config, manifest: cache_lib.Manifest) -> str:
    reasons = ", ".join(f"{reason}: {count}" for reason, count in manifest.skips_per_reason().items()) or "none"
    examples = "\n  ".join(s["detail"] for s in manifest.skipped[:5])
    buckets = " ".join(manifest.buckets)
    return (
        f"no usable sample in {redact(dataset_name(config))}: every input was skipped ({reasons}).\n  {examples}\n"
        f"Buckets: {buckets}. Check the paths and captions, or add buckets the clips can fill "
        "(a clip needs at least a bucket's frame count)."
    )


def format_summary(manifest: cache_lib.Manifest, cache_dir: str, models: list[str] | None = None) -> str:
    """What the cache holds and skipped; with ``models``, the encoders this run loaded (none when nothing was
    left to encode, which says why a rerun took seconds)."""
    lines = [f"Latent cache: {redact(cache_dir)}", f"  samples: {manifest.num_samples} "
             f"(encoded now: {manifest.stats.get('encoded', 0)}, reused: {manifest.stats.get('reused', 0)})"]
    if models is not None:
        lines.append(f"  models loaded: {', '.join(models) or 'none'}")
    lines.append("  per bucket: " + ", ".join(f"{b}: {n}" for b, n in manifest.counts_per_bucket().items()))
    if manifest.skipped:
        lines.append("  skipped: " + ", ".join(f"{r}: {n}" for r, n in manifest.skips_per_reason().items()))
        lines.extend(f"    - {s['detail'] or s['path']}" for s in manifest.skipped[:20])
        if len(manifest.skipped) > 20:
            lines.append(f"    ... and {len(manifest.skipped) - 20} more (see {cache_lib.MANIFEST})")
    if manifest.truncated_captions:
        lines.append(f"  captions truncated to max_sequence_length: {manifest.truncated_captions}")
    return "\n".join(lines)


def ensure_cache(config: Config) -> cache_lib.LatentCache:
    """The cache training reads: brought up to date when the dataset is at hand, else checked as is."""
    from ray_ltx.model.family import family_for

    cache_dir = storage.absolute(config.cache_dir)
    if dataset_given(config.data):
        preprocess(config)
        return cache_lib.LatentCache.open(cache_dir)
    latent_cache = cache_lib.LatentCache.open(cache_dir)
    damaged = cache_lib.damaged_shards(cache_dir, latent_cache.manifest)
    if damaged:
        raise CacheError(
            f"the latent cache in {redact(cache_dir)} has {len(damaged)} damaged or missing shard(s) (e.g. {damaged[0]}): "
            "run `ray-ltx preprocess` (or train) with --data_root to encode those samples again; the rest is reused")
    fp = cache_lib.fingerprint(config, family_for(config))
    problems = cache_lib.describe_mismatch(fp, latent_cache.manifest.fingerprint)
    wanted = {str(b) for b in config.data.video_resolution_buckets}
    if not wanted & set(latent_cache.manifest.buckets):
        problems.append(f"buckets: cache has {latent_cache.manifest.buckets}, config wants {sorted(wanted)}")
    if problems:
        raise CacheError(
            f"the latent cache in {redact(cache_dir)} was built for something else:\n  " + "\n  ".join(problems)
            + "\nPass --data_root (with --rebuild_cache) to rebuild it, or --cache_dir to use another cache"
        )
    return latent_cache
