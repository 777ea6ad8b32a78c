"""Preprocessing with real Ray Data, real video files and the tiny model: layouts, buckets, skips, the cache."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import base_config, copy_tree
from ray_ltx.buckets import Bucket, assign_bucket
from ray_ltx.data import cache as cache_lib
from ray_ltx.data.pipeline import encoder_layout, ensure_cache, preprocess
from ray_ltx.data.samples import moving_shape_frames
from ray_ltx.data.sources import read_records
from ray_ltx.data.video import decode_frames, probe, sample_frame_indices
from ray_ltx.errors import CacheError, DatasetError
from ray_ltx.media import write_image, write_video

pytestmark = pytest.mark.usefixtures("ray_cluster")


def clip(path: Path, frames: int, height: int = 96, width: int = 128, seed: int = 0) -> Path:
    return write_video(path, moving_shape_frames(frames, height, width, seed=seed), fps=24)


# -- decode, sample, bucket (no Ray) -------------------------------------------------------------


def test_sample_videos_decode_to_the_requested_size(sample_data: Path) -> None:
    videos = (sample_data / "videos.txt").read_text().split()
    for rel in videos:
        info = probe(str(sample_data / rel))
        indices = sample_frame_indices(info.num_frames, 9, info.fps)
        frames = decode_frames(str(sample_data / rel), indices, 64, 96)
        assert frames.shape == (9, 64, 96, 3) and frames.dtype == np.uint8
        assert frames.std() > 5  # a real picture, not a blank


def test_decode_tasks_and_shard_writers_import_no_torch() -> None:
    """Every CPU's first decode task imports its module while the encoders load: torch would take seconds of it."""
    import subprocess
    import sys

    code = "import sys, ray_ltx.data.decode, ray_ltx.data.pipeline; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"


def test_bucket_takes_the_most_frames_then_the_closest_aspect() -> None:
    buckets = [Bucket.parse(b) for b in ("9x64x96", "17x64x96", "17x96x64", "49x64x96")]
    assert str(assign_bucket(20, 96, 128, buckets)) == "17x64x96"  # landscape, 17 frames fit, 49 do not
    assert str(assign_bucket(20, 128, 96, buckets)) == "17x96x64"  # portrait goes to the portrait bucket
    assert str(assign_bucket(60, 96, 128, buckets)) == "49x64x96"
    assert assign_bucket(5, 96, 128, buckets) is None  # shorter than every bucket


def test_frame_sampling_modes() -> None:
    assert sample_frame_indices(49, 9, 24) == [0, 6, 12, 18, 24, 30, 36, 42, 48]
    assert sample_frame_indices(49, 9, 24, mode="stride", stride=2) == list(range(0, 18, 2))
    assert sample_frame_indices(48, 9, 48, mode="fps", sample_fps=24) == list(range(0, 18, 2))
    with pytest.raises(ValueError):
        sample_frame_indices(8, 9, 24)


# -- layouts -------------------------------------------------------------------------------------


def _layout(root: Path, kind: str) -> dict:
    (root / "clips").mkdir(parents=True)
    clip(root / "clips" / "a.mp4", 20, seed=1)
    write_video(root / "clips" / "b.webm", moving_shape_frames(12, 96, 128, seed=2), fps=24)
    captions = {"clips/a.mp4": "a red circle moves right", "clips/b.webm": "a blue square falls"}
    if kind == "csv":
        lines = ["video,caption"] + [f"{p},{c}" for p, c in captions.items()]
        (root / "meta.csv").write_text("\n".join(lines) + "\n")
        return {"dataset_file": str(root / "meta.csv")}
    if kind == "jsonl":
        (root / "meta.jsonl").write_text("".join(json.dumps({"file_name": p, "text": c}) + "\n" for p, c in captions.items()))
        return {"dataset_file": str(root / "meta.jsonl")}
    if kind == "folder":
        for rel, caption in captions.items():
            (root / rel).with_suffix(".txt").write_text(caption)
        return {"dataset_layout": "folder"}
    (root / "prompts.txt").write_text("\n".join(captions.values()) + "\n")
    (root / "videos.txt").write_text("\n".join(captions) + "\n")
    return {}


@pytest.mark.parametrize("kind,layout", [("finetrainers", "finetrainers"), ("csv", "metadata"), ("jsonl", "metadata"),
                                         ("folder", "folder")])
def test_each_dataset_layout_lists_the_same_clips(kind: str, layout: str, tmp_path: Path) -> None:
    extra = _layout(tmp_path / "data", kind)
    config = base_config(Path("unused-model"), tmp_path / "data", tmp_path / "out", **extra).resolved()
    records, skips, found = read_records(config)
    assert found == layout and not skips
    assert {r.rel_path: r.caption for r in records} == {"clips/a.mp4": "BW_STYLE a red circle moves right",
                                                        "clips/b.webm": "BW_STYLE a blue square falls"}


def test_mp4_and_webm_clips_are_encoded_into_their_buckets(tiny_model: Path, tmp_path: Path) -> None:
    config = base_config(tiny_model, tmp_path / "data", tmp_path / "out", **_layout(tmp_path / "data", "csv"))
    manifest = preprocess(config)
    assert manifest.num_samples == 2, manifest.skipped
    assert manifest.counts_per_bucket() == {"9x64x96": 1, "17x64x96": 1}


def test_images_become_one_frame_clips(tiny_model: Path, tmp_path: Path) -> None:
    root = tmp_path / "data"
    root.mkdir()
    write_image(root / "still.png", moving_shape_frames(1, 96, 128)[0])
    write_image(root / "photo.jpg", moving_shape_frames(1, 128, 96, seed=3)[0])
    (root / "prompts.txt").write_text("a still circle\na still square\n")
    (root / "videos.txt").write_text("still.png\nphoto.jpg\n")
    manifest = preprocess(base_config(tiny_model, root, tmp_path / "out", video_resolution_buckets=["1x64x96", "1x96x64"]))
    assert manifest.counts_per_bucket() == {"1x64x96": 1, "1x96x64": 1}


# -- skips ---------------------------------------------------------------------------------------


def test_every_skip_reason_is_recorded_with_the_file(tiny_model: Path, tmp_path: Path, capsys) -> None:
    root = tmp_path / "data"
    (root / "v").mkdir(parents=True)
    clip(root / "v" / "good.mp4", 20)
    clip(root / "v" / "short.mp4", 5)
    (root / "v" / "empty.mp4").write_bytes(b"")
    (root / "v" / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypisom" + bytes(range(256)) * 4)
    good = (root / "v" / "good.mp4").read_bytes()
    (root / "v" / "cut.mp4").write_bytes(good[: len(good) // 3])
    write_image(root / "v" / "still.png", moving_shape_frames(1, 96, 128)[0])
    entries = [
        ("good clip", "v/good.mp4"), ("short clip", "v/short.mp4"), ("empty file", "v/empty.mp4"),
        ("corrupt file", "v/corrupt.mp4"), ("cut file", "v/cut.mp4"), ("", "v/good.mp4"),
        ("missing file", "v/missing.mp4"), ("escaping path", "../outside.mp4"), ("a still image", "v/still.png"),
    ]
    (root / "prompts.txt").write_text("\n".join(c for c, _ in entries) + "\n")
    (root / "videos.txt").write_text("\n".join(p for _, p in entries) + "\n")
    manifest = preprocess(base_config(tiny_model, root, tmp_path / "out"))
    assert manifest.num_samples == 1
    reasons = {s["path"]: s["reason"] for s in manifest.skipped}
    assert reasons["v/short.mp4"] == "too_short"
    assert reasons["v/empty.mp4"] == "empty_file"
    assert reasons["v/corrupt.mp4"] == "unreadable"
    assert reasons["v/cut.mp4"] in ("truncated", "unreadable", "too_short")
    assert reasons["v/missing.mp4"] == "missing_file"
    assert reasons["../outside.mp4"] == "path_outside_data_root"
    assert reasons["v/still.png"] == "image_without_image_bucket"
    assert "empty_caption" in {s["reason"] for s in manifest.skipped}
    summary = capsys.readouterr().out
    assert "skipped:" in summary and "v/short.mp4" in summary and "too_short" in summary


def _ray_data_logs() -> set[Path]:
    """Each Ray Data run's log (its plan, its workers' warnings): one file per dataset."""
    from ray.data._internal.logging import get_log_directory

    return set(Path(get_log_directory()).glob("ray-data-dataset_*.log"))


def _lines(logs: set[Path]) -> list[str]:
    return [line for path in sorted(logs) for line in path.read_text().splitlines()]


def _good_and_short_clip(root: Path) -> Path:
    """A finetrainers dataset of a usable clip and one too short for any bucket (skipped)."""
    root.mkdir()
    clip(root / "good.mp4", 12)
    clip(root / "short.mp4", 5)
    (root / "prompts.txt").write_text("a good clip\na short clip\n")
    (root / "videos.txt").write_text("good.mp4\nshort.mp4\n")
    return root


@pytest.fixture
def ray_data_plans():
    """Ray Data's plan lines in its logs: ray-ltx quiets the executor's INFO lines once it has connected to Ray
    (``ray_ltx.logs.quiet_ray``), which an earlier test in the session may have done."""
    import logging

    logger = logging.getLogger("ray.data._internal.execution.streaming_executor")
    level = logger.level
    logger.setLevel(logging.INFO)
    yield
    logger.setLevel(level)


@pytest.mark.usefixtures("ray_data_plans")
def test_every_column_of_the_stream_stays_plain_arrow(tiny_model: Path, tmp_path: Path) -> None:
    """One row per batch, so the empty prompt and a skipped clip each travel alone: their empty shapes once made
    Ray Data pickle the column."""
    root = _good_and_short_clip(tmp_path / "data")
    before = _ray_data_logs()
    manifest = preprocess(base_config(tiny_model, root, tmp_path / "out", encode_batch_size=1))
    assert manifest.num_samples == 1 and [s["reason"] for s in manifest.skipped] == ["too_short"]
    lines = _lines(_ray_data_logs() - before)
    assert any("Execution plan" in line for line in lines)  # the run's own log was read
    fallbacks = [line for line in lines if re.search(r"pickl|into pyarrow array|ArrowConversionError|Pandas block", line)]
    assert not fallbacks, fallbacks[:5]


@pytest.mark.usefixtures("ray_data_plans")
def test_a_rerun_over_a_complete_cache_loads_no_model(tiny_model: Path, tmp_path: Path, capsys) -> None:
    """Nothing left to encode but clips the last run skipped: they are decoded again, no encoder is loaded."""
    root = _good_and_short_clip(tmp_path / "data")
    config = base_config(tiny_model, root, tmp_path / "out")
    cache_dir = Path(config.cache_dir)
    first = preprocess(config)
    assert "models loaded: VAE, text encoder" in capsys.readouterr().out

    before = _ray_data_logs()
    again = preprocess(config)
    assert "models loaded: none" in capsys.readouterr().out
    assert again.skipped == first.skipped and again.stats["reused"] == 1 and again.stats["encoded"] == 0
    plans = [line for line in _lines(_ray_data_logs() - before) if "Execution plan" in line]
    assert plans and not any("Encoder" in line for line in plans), plans  # a decode-only run, no encoder actor

    embeds, mask = cache_lib.read_empty_prompt(str(cache_dir))
    (cache_dir / cache_lib.EMPTY_PROMPT).unlink()
    preprocess(config)  # as if the last run died before the empty prompt was written
    assert "models loaded: text encoder\n" in capsys.readouterr().out
    embeds_again, mask_again = cache_lib.read_empty_prompt(str(cache_dir))
    assert torch.allclose(embeds_again, embeds, atol=1e-5) and torch.equal(mask_again, mask)

    clip(root / "short.mp4", 12, seed=1)  # the skipped clip, replaced by a usable one
    fixed = preprocess(config)
    assert "models loaded: VAE, text encoder" in capsys.readouterr().out
    assert fixed.num_samples == 2 and not fixed.skipped and fixed.stats["encoded"] == 1


def test_nothing_surviving_is_an_error_that_says_why(tiny_model: Path, tmp_path: Path) -> None:
    root = tmp_path / "data"
    root.mkdir()
    clip(root / "short.mp4", 5)
    (root / "prompts.txt").write_text("too short\n")
    (root / "videos.txt").write_text("short.mp4\n")
    with pytest.raises(DatasetError, match="too_short"):
        preprocess(base_config(tiny_model, root, tmp_path / "out"))
    assert not (tmp_path / "out" / "cache" / cache_lib.MANIFEST).exists()


# -- the cache -----------------------------------------------------------------------------------


def test_id_token_is_encoded_and_the_cache_reads_back_exactly(tiny_model: Path, sample_data: Path,
                                                              shared_cache: Path) -> None:
    from ray_ltx.data.encode import PromptEncoder, VaeEncoder

    cache = cache_lib.LatentCache.open(str(shared_cache))
    sid = cache.sample_ids("17x64x96")[0]
    row = cache.read([sid])[0]
    assert row["caption"].startswith("BW_STYLE ")
    tensors = cache_lib.row_to_tensors(row)
    config = base_config(tiny_model, sample_data, shared_cache.parent / "out")
    # Encode the same clip and caption again, outside Ray: the cache holds exactly that.
    path = str(sample_data / row["rel_path"])
    info = probe(path)
    frames = decode_frames(path, sample_frame_indices(info.num_frames, 17, info.fps), 64, 96)
    latents = VaeEncoder(config.to_dict()).encode(frames[None])[0]
    assert torch.equal(tensors["latents"], latents)
    embeds, mask, _ = PromptEncoder(config.to_dict()).encode([row["caption"]])
    assert torch.equal(tensors["prompt_embeds"], embeds[0]) and torch.equal(tensors["prompt_attention_mask"], mask[0])
    empty_embeds, empty_mask = cache_lib.read_empty_prompt(str(shared_cache))
    assert empty_embeds.shape == embeds[0].shape and int(empty_mask.sum()) == 1  # just </s>


def test_interrupted_run_resumes_encoding_each_clip_once(tiny_model: Path, sample_data: Path, shared_cache: Path,
                                                         tmp_path: Path) -> None:
    cache_dir = copy_tree(shared_cache, tmp_path / "cache")  # a finished preprocessing run of sample_data
    config = base_config(tiny_model, sample_data, tmp_path / "out", cache_dir=str(cache_dir))
    first = cache_lib.LatentCache.open(str(cache_dir)).manifest
    # As if the run died before its last shards and the manifest were written.
    (cache_dir / cache_lib.MANIFEST).unlink()
    lost = first.shards[-1]
    (cache_dir / lost.path).unlink()
    (cache_dir / lost.path).with_name(".tmp-0badc0de-" + Path(lost.path).name).write_bytes(b"half a shard")
    second = preprocess(config)
    assert second.stats["encoded"] == len([s for s in lost.sample_ids if s])
    assert second.stats["reused"] == first.num_samples - second.stats["encoded"]
    ids = LatentIds(str(cache_dir))
    assert len(ids) == len(set(ids)) == first.num_samples


def LatentIds(cache_dir: str) -> list[str]:  # noqa: N802 - reads like a value
    return cache_lib.LatentCache.open(cache_dir).sample_ids()


def test_cache_from_another_setup_is_refused_then_rebuilt_on_request(tiny_model: Path, sample_data: Path,
                                                                     shared_cache: Path, tmp_path: Path) -> None:
    cache = str(copy_tree(shared_cache, tmp_path / "cache"))  # built with id_token BW_STYLE
    other = base_config(tiny_model, sample_data, tmp_path / "out", id_token="OTHER_TOKEN", cache_dir=cache)
    with pytest.raises(CacheError, match="id_token"):
        preprocess(other)
    with pytest.raises(CacheError, match="max_sequence_length"):
        ensure_cache(base_config(tiny_model, None, tmp_path / "out", max_sequence_length=64, cache_dir=cache))
    rebuilt = preprocess(base_config(tiny_model, sample_data, tmp_path / "out", id_token="OTHER_TOKEN",
                                     rebuild_cache=True, cache_dir=cache))
    assert rebuilt.fingerprint["id_token"] == "OTHER_TOKEN" and rebuilt.stats["reused"] == 0


@pytest.mark.parametrize(
    ("actors", "gpus_per_actor", "cluster_gpus", "expected"),
    [
        (None, None, 0, (0.0, 1)),  # CPU cluster: one CPU actor per encoder stage
        (None, None, 1, (0.25, 2)),  # two VAE + two T5 actors per GPU, a quarter GPU each
        (None, None, 8, (0.25, 16)),
        (3, None, 8, (0.25, 3)),  # what the user set wins
        (None, 0.5, 4, (0.5, 4)),  # --encode_gpus 0.5: one pair per GPU
        (None, 1.0, 1, (1.0, 1)),  # a pair that cannot fit: still one actor per stage (and a warning)
        (2, 0, 4, (0.0, 2)),  # --encode_gpus 0: CPU encoders on a GPU cluster
    ],
)
def test_encoder_layout_defaults_fill_every_gpu(actors, gpus_per_actor, cluster_gpus, expected) -> None:
    assert encoder_layout(actors, gpus_per_actor, cluster_gpus) == expected


def test_encoder_layout_warns_when_it_asks_for_more_gpus_than_the_cluster_has(caplog) -> None:
    with caplog.at_level("WARNING", logger="ray_ltx.data.pipeline"):
        assert encoder_layout(4, 1.0, 2) == (1.0, 4)
    assert "asks for 8 GPUs" in caplog.text and "--encode_actors" in caplog.text


def test_a_cpu_encodes_a_clip_of_the_seed_bucket_in_fp32_in_seconds(tiny_model: Path, tmp_path: Path) -> None:
    """The default dtypes on a machine without a GPU: fp32 (bf16 3D convolutions run ~100x slower on CPUs)."""
    import time

    from ray_ltx.data.encode import VaeEncoder

    path = clip(tmp_path / "seed.mp4", 49, 512, 768)
    info = probe(str(path))
    frames = decode_frames(str(path), sample_frame_indices(info.num_frames, 49, info.fps), 512, 768)
    config = base_config(tiny_model, tmp_path, tmp_path / "out", video_resolution_buckets=["49x512x768"],
                         vae_dtype="auto", text_encoder_dtype="auto")
    started = time.monotonic()
    latents = VaeEncoder(config.to_dict()).encode(frames[None])
    seconds = time.monotonic() - started
    assert latents.dtype == torch.float32 and latents.shape[2:] == (7, 16, 24)  # 49 frames / 8 + 1, 512 / 32, 768 / 32
    assert seconds < 60, f"{seconds:.1f} s for one 49x512x768 clip"  # bf16 takes minutes
