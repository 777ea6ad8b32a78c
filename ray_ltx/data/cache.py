"""The latent cache: parquet shards per bucket plus a manifest written last.

Layout under ``cache_dir``::

    manifest.json                 format version, fingerprint, latent spec, shards, counts, skips
    empty_prompt.safetensors      the empty-prompt embedding, for caption dropout
    shards/<bucket>/<name>.parquet one row (and one row group) per sample

Every file is written under a temporary name and renamed, and each shard carries the
fingerprint of what made it in its parquet metadata, so an interrupted run leaves only complete
shards that a rerun can reuse, and a cache made for another model or bucket set is never
mistaken for this one.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ray_ltx import __version__, storage
from ray_ltx.config import Config
from ray_ltx.errors import CacheError
from ray_ltx.redaction import redact

if TYPE_CHECKING:  # torch only where tensors are made: the shard writers of preprocessing start without it
    import torch

    from ray_ltx.model.family import ModelFamily

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
EMPTY_PROMPT = "empty_prompt.safetensors"
SHARDS = "shards"
FINGERPRINT_KEY = b"ray_ltx.fingerprint"
LATENT_SPEC_KEY = b"ray_ltx.latent_spec"

SHARD_SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),
        ("caption", pa.string()),
        ("rel_path", pa.string()),
        ("bucket", pa.string()),
        ("latents", pa.binary()),
        ("latents_shape", pa.list_(pa.int32())),
        ("latents_dtype", pa.string()),
        ("prompt_embeds", pa.binary()),
        ("prompt_embeds_shape", pa.list_(pa.int32())),
        ("prompt_embeds_dtype", pa.string()),
        ("prompt_attention_mask", pa.binary()),
        ("caption_truncated", pa.bool_()),
        # The model family's per-sample tensors beyond latents and prompt (LTX-2's audio latents), as safetensors
        # bytes; empty or absent (caches of earlier ray-ltx) when it has none.
        ("extras", pa.binary()),
    ]
)


# -- tensors <-> bytes (bfloat16 has no numpy dtype, so go through raw bytes) --------------------


def tensor_to_bytes(tensor: torch.Tensor) -> tuple[bytes, list[int], str]:
    import torch

    tensor = tensor.detach().contiguous().cpu()
    return tensor.view(torch.uint8).numpy().tobytes(), list(tensor.shape), str(tensor.dtype).removeprefix("torch.")


def tensor_from_bytes(data: bytes, shape: Sequence[int], dtype: str) -> torch.Tensor:
    import torch

    flat = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    return flat.view(getattr(torch, dtype)).reshape(tuple(shape))


def extras_to_bytes(extras: dict[str, torch.Tensor]) -> bytes:
    from safetensors.torch import save

    return save({k: v.detach().contiguous().cpu() for k, v in extras.items()}) if extras else b""


def extras_from_bytes(data: bytes | None) -> dict[str, torch.Tensor]:
    from safetensors.torch import load

    return load(data) if data else {}


# -- the fingerprint: what a cache was made for --------------------------------------------------


def fingerprint(config: Config, family: ModelFamily) -> dict[str, Any]:
    """What a cache was made for: the model family's facts (version, VAE and text-encoder configs) and the
    preprocessing settings."""
    data = config.data
    return {
        "format_version": FORMAT_VERSION,
        **family.fingerprint(),
        "model": storage.absolute(config.model.pretrained_model_name_or_path)
        if storage.exists(config.model.pretrained_model_name_or_path)
        else config.model.pretrained_model_name_or_path,
        "revision": config.model.revision,
        "vae_dtype": config.model.vae_dtype,
        "text_encoder_dtype": config.model.text_encoder_dtype,
        "id_token": data.id_token,
        "max_sequence_length": family.max_sequence_length(),
        "frame_sampling": [data.frame_sampling, data.sample_fps, data.frame_stride],
        **({"audio": data.audio} if data.audio != "off" else {}),
    }


def fingerprint_digest(fp: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:16]


def describe_mismatch(expected: dict[str, Any], found: dict[str, Any]) -> list[str]:
    problems = []
    if expected.get("model_version") != found.get("model_version") or expected.get("family") != found.get("family"):
        problems.append(
            f"model: the cache holds latents of {_model_name(found)}, this run trains {_model_name(expected)}, "
            "whose VAE encodes differently: rebuild the cache for it")
    problems += [
        f"{key}: cache has {found.get(key)!r}, config wants {expected.get(key)!r}"
        for key in sorted(set(expected) | set(found))
        if expected.get(key) != found.get(key) and key not in ("model_version", "family")
    ]
    return problems


def _model_name(fp: dict[str, Any]) -> str:
    if not fp.get("model_version"):
        return "an unrecorded model version (a cache of an earlier ray-ltx)"
    return f"{fp.get('family', 'ltx_video')} {fp['model_version']}"


# -- shards ----------------------------------------------------------------------------------------


@dataclass
class ShardInfo:
    """A shard and the sample id of each of its rows (None: a row the dataset no longer uses)."""

    path: str  # relative to cache_dir
    bucket: str
    sample_ids: list[str | None]
    truncated: int = 0
    size: int | None = None  # bytes as written (None in caches of earlier ray-ltx versions)


def write_shard(cache_dir: str, bucket: str, rows: list[dict[str, Any]], digest: str, latent_spec: str) -> ShardInfo:
    """Write one parquet shard (one row group per sample, so single samples read cheaply).

    The shard's metadata records the cache fingerprint and the latent spec, so an interrupted
    run's shards can be checked and reused without the manifest.
    """
    table = pa.Table.from_pylist(rows, schema=SHARD_SCHEMA)
    table = table.replace_schema_metadata({FINGERPRINT_KEY: digest.encode(), LATENT_SPEC_KEY: latent_spec.encode()})
    buffer = io.BytesIO()
    pq.write_table(table, buffer, row_group_size=1, compression="zstd")
    rel = f"{SHARDS}/{bucket}/{rows[0]['sample_id']}-{uuid.uuid4().hex[:8]}.parquet"
    data = buffer.getvalue()
    storage.write_bytes(storage.join(cache_dir, rel), data)
    return ShardInfo(rel, bucket, [row["sample_id"] for row in rows], sum(bool(r["caption_truncated"]) for r in rows),
                     len(data))


@dataclass
class ShardHeader:
    digest: str | None
    latent_spec: str | None
    info: ShardInfo


def read_shard_header(cache_dir: str, rel: str) -> ShardHeader:
    """A shard's fingerprint, latent spec and sample ids, reading only metadata and two small columns."""
    fs, inner = storage.filesystem(storage.join(cache_dir, rel))
    with fs.open_input_file(inner) as handle:
        size = handle.size()
        parquet = pq.ParquetFile(handle)
        metadata = parquet.schema_arrow.metadata or {}
        table = parquet.read(columns=["sample_id", "bucket", "caption_truncated"])
    ids = table.column("sample_id").to_pylist()
    buckets = table.column("bucket").to_pylist()
    truncated = sum(bool(t) for t in table.column("caption_truncated").to_pylist())
    digest, spec = metadata.get(FINGERPRINT_KEY), metadata.get(LATENT_SPEC_KEY)
    return ShardHeader(
        digest.decode() if digest else None,
        spec.decode() if spec else None,
        ShardInfo(rel, buckets[0] if buckets else "", ids, truncated, size),
    )


def existing_shards(cache_dir: str) -> list[str]:
    """Complete shards on storage (temporary files of interrupted writes are not shards)."""
    base = storage.join(cache_dir, SHARDS)
    prefix = base.rstrip("/") + "/"
    shards = []
    for path in storage.list_files(base):
        rel = path[len(prefix):]
        if rel.endswith(".parquet") and not rel.rsplit("/", 1)[-1].startswith("."):
            shards.append(f"{SHARDS}/{rel}")
    return shards


# -- the manifest ----------------------------------------------------------------------------------


@dataclass
class Manifest:
    fingerprint: dict[str, Any]
    latent_spec: dict[str, Any]
    buckets: list[str]
    shards: list[ShardInfo]
    skipped: list[dict[str, str]] = field(default_factory=list)
    layout: str = ""
    created: float = field(default_factory=time.time)
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def num_samples(self) -> int:
        return sum(1 for s in self.shards for sid in s.sample_ids if sid is not None)

    @property
    def truncated_captions(self) -> int:
        return sum(shard.truncated for shard in self.shards)

    def counts_per_bucket(self) -> dict[str, int]:
        counts = {bucket: 0 for bucket in self.buckets}
        for shard in self.shards:
            counts[shard.bucket] = counts.get(shard.bucket, 0) + sum(sid is not None for sid in shard.sample_ids)
        return counts

    def skips_per_reason(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for skip in self.skipped:
            counts[skip["reason"]] = counts.get(skip["reason"], 0) + 1
        return dict(sorted(counts.items()))

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "ray_ltx_version": __version__,
            "created": self.created,
            "layout": self.layout,
            "fingerprint": self.fingerprint,
            "latent_spec": self.latent_spec,
            "buckets": self.buckets,
            "num_samples": self.num_samples,
            "counts_per_bucket": self.counts_per_bucket(),
            "skips_per_reason": self.skips_per_reason(),
            "truncated_captions": self.truncated_captions,
            "stats": self.stats,
            "shards": [
                {"path": s.path, "bucket": s.bucket, "sample_ids": s.sample_ids, "truncated": s.truncated,
                 "size": s.size}
                for s in self.shards
            ],
            "skipped": self.skipped,
        }

    def summary(self) -> dict[str, Any]:
        """The manifest without per-shard lists: what a report or MLflow shows."""
        data = self.to_dict()
        data.pop("shards")
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        if not isinstance(data, dict) or data.get("format_version") != FORMAT_VERSION:
            found = data.get("format_version") if isinstance(data, dict) else type(data).__name__
            raise CacheError(f"cache format {found} is not {FORMAT_VERSION}: rebuild the cache with --rebuild_cache")
        try:
            return cls._from_dict(data)
        except (KeyError, TypeError, ValueError) as error:
            raise CacheError(f"the cache manifest is damaged ({type(error).__name__}: {error} missing or malformed); "
                             "rebuild the cache with --rebuild_cache (complete shards are checked and reused)") from None

    @classmethod
    def _from_dict(cls, data: dict[str, Any]) -> Manifest:
        return cls(
            fingerprint=data["fingerprint"],
            latent_spec=data["latent_spec"],
            buckets=data["buckets"],
            shards=[ShardInfo(s["path"], s["bucket"], list(s["sample_ids"]), s.get("truncated", 0), s.get("size"))
                    for s in data["shards"]],
            skipped=data.get("skipped", []),
            layout=data.get("layout", ""),
            created=data.get("created", 0.0),
            stats=data.get("stats", {}),
        )


def read_manifest(cache_dir: str) -> Manifest | None:
    path = storage.join(cache_dir, MANIFEST)
    if not storage.is_file(path):
        return None
    try:
        data = json.loads(storage.read_text(path))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CacheError(f"{redact(path)}: not a valid manifest ({error}); rebuild the cache with --rebuild_cache") from None
    return Manifest.from_dict(data)


def write_manifest(cache_dir: str, manifest: Manifest) -> None:
    storage.write_text(storage.join(cache_dir, MANIFEST), json.dumps(manifest.to_dict(), indent=1))


def write_empty_prompt(cache_dir: str, embeds: torch.Tensor, mask: torch.Tensor) -> None:
    import torch
    from safetensors.torch import save

    data = save({"prompt_embeds": embeds.contiguous(), "prompt_attention_mask": mask.to(torch.uint8).contiguous()})
    storage.write_bytes(storage.join(cache_dir, EMPTY_PROMPT), data)


def read_empty_prompt(cache_dir: str) -> tuple[torch.Tensor, torch.Tensor]:
    from safetensors.torch import load

    tensors = load(storage.read_bytes(storage.join(cache_dir, EMPTY_PROMPT)))
    return tensors["prompt_embeds"], tensors["prompt_attention_mask"].bool()


# -- reading samples back --------------------------------------------------------------------------


def row_to_tensors(row: dict[str, Any]) -> dict[str, torch.Tensor]:
    import torch

    mask = np.frombuffer(row["prompt_attention_mask"], dtype=np.uint8).astype(bool)
    return {
        "latents": tensor_from_bytes(row["latents"], row["latents_shape"], row["latents_dtype"]),
        "prompt_embeds": tensor_from_bytes(row["prompt_embeds"], row["prompt_embeds_shape"],
                                           row["prompt_embeds_dtype"]),
        "prompt_attention_mask": torch.from_numpy(mask.copy()),
        "extras": extras_from_bytes(row.get("extras")),
    }


def read_samples(cache_dir: str, refs: Sequence[tuple[str, int]]) -> list[dict[str, Any]]:
    """Rows (as dicts) for (shard path, row index) references, reading only their row groups."""
    wanted: dict[str, set[int]] = {}
    for shard, index in refs:
        wanted.setdefault(shard, set()).add(index)
    loaded: dict[tuple[str, int], dict[str, Any]] = {}
    for shard, indices in wanted.items():
        fs, inner = storage.filesystem(storage.join(cache_dir, shard))
        ordered = sorted(indices)
        with fs.open_input_file(inner) as handle:
            rows = pq.ParquetFile(handle).read_row_groups(ordered).to_pylist()
        loaded.update({(shard, index): row for index, row in zip(ordered, rows, strict=True)})
    return [loaded[ref] for ref in refs]


def damaged_shards(cache_dir: str, manifest: Manifest) -> list[str]:
    """Shards of the manifest that are missing or not the size they were written with."""
    import pyarrow.fs as pafs

    fs, inner = storage.filesystem(storage.join(cache_dir, SHARDS))
    base = inner.rstrip("/")
    infos = fs.get_file_info(pafs.FileSelector(inner, recursive=True, allow_not_found=True))
    sizes = {f"{SHARDS}/{info.path[len(base) + 1:]}": info.size for info in infos if info.type == pafs.FileType.File}
    return [s.path for s in manifest.shards if s.path not in sizes or (s.size is not None and sizes[s.path] != s.size)]


class LatentCache:
    """A complete cache: its manifest plus random access to its samples."""

    def __init__(self, cache_dir: str, manifest: Manifest):
        self.cache_dir = cache_dir
        self.manifest = manifest
        self._index = {
            sample_id: (shard.path, row)
            for shard in manifest.shards
            for row, sample_id in enumerate(shard.sample_ids)
            if sample_id is not None
        }

    @classmethod
    def open(cls, cache_dir: str) -> LatentCache:
        manifest = read_manifest(cache_dir)
        if manifest is None:
            raise CacheError(f"no complete latent cache in {redact(cache_dir)}: run `ray-ltx preprocess` first")
        return cls(cache_dir, manifest)

    def sample_ids(self, bucket: str | None = None) -> list[str]:
        return [
            sid
            for shard in self.manifest.shards
            if bucket in (None, shard.bucket)
            for sid in shard.sample_ids
            if sid is not None
        ]

    def ref(self, sample_id: str) -> tuple[str, int]:
        return self._index[sample_id]

    def read(self, sample_ids: Sequence[str]) -> list[dict[str, Any]]:
        return read_samples(self.cache_dir, [self._index[sid] for sid in sample_ids])
