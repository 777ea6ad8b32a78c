"""Datasets as the other trainers lay them out: finetrainers' dataset config and validation file,
LTX-Video-Trainer's dataset.json, and their spellings of ray-ltx settings.

Listing tests are unit-level (no Ray, no decoding); one end-to-end preprocess run checks that per-dataset
buckets, id tokens and caption clean-up reach the latent cache.
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import pytest

from conftest import base_config
from ray_ltx.cli import build_parser, config_from_args
from ray_ltx.config import build_config
from ray_ltx.data import cache as cache_lib
from ray_ltx.data.samples import moving_shape_frames
from ray_ltx.data.sources import read_records
from ray_ltx.data.validation_set import (
    ValidationItem,
    read_validation_dataset,
    read_validation_prompts,
    validation_items,
)
from ray_ltx.errors import ConfigError, DatasetError
from ray_ltx.media import write_image


def touch(path: Path) -> Path:
    """A media file for listing tests: listing reads names, not pixels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x00")
    return path


def write_json(path: Path, value: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value))
    return path


def listed(**settings: Any) -> tuple[dict[str, Any], list, str]:
    """{caption: record} of a config built from ``settings`` and resolved as the driver resolves it."""
    records, skips, layout = read_records(build_config(settings).resolved())
    return {r.caption: r for r in records}, skips, layout


# -- LTX-Video-Trainer: dataset.json / .jsonl / .csv with caption + media_path ---------------------


def _ltx_dataset(root: Path, kind: str) -> Path:
    rows = [{"caption": "a red circle rises", "media_path": "scenes/a.mp4"},
            {"caption": "a still square", "media_path": "scenes/b.png"}]
    for row in rows:
        touch(root / row["media_path"])
    path = root / f"dataset.{kind}"
    if kind == "json":
        path.write_text(json.dumps(rows, indent=2))
    elif kind == "jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    else:
        with path.open("w", newline="") as out:
            writer = csv.DictWriter(out, ["caption", "media_path"])  # caption_videos.py's column order
            writer.writeheader()
            writer.writerows(rows)
    return path


@pytest.mark.parametrize("kind", ["json", "jsonl", "csv"])
def test_ltx_video_trainer_dataset_file_is_found_and_read_relative_to_its_folder(kind: str, tmp_path: Path) -> None:
    path = _ltx_dataset(tmp_path / "clips", kind)
    by_root, skips, layout = listed(data_root=str(tmp_path / "clips"))  # auto-detected in data_root
    by_file, _, _ = listed(dataset_file=str(path))  # or named alone, as LTX-Video-Trainer takes it
    assert layout == "metadata" and not skips
    assert by_root.keys() == by_file.keys() == {"a red circle rises", "a still square"}
    assert by_file["a still square"].path == str(tmp_path / "clips" / "scenes" / "b.png")
    assert [r.sample_id for r in by_root.values()] == [r.sample_id for r in by_file.values()]


# -- finetrainers' --dataset_config ---------------------------------------------------------------


def _two_datasets(tmp_path: Path) -> Path:
    # A finetrainers two-file dataset with finetrainers' other file names, and a folder of captioned stills.
    videos = tmp_path / "videos-ds"
    touch(videos / "v" / "1.mp4")
    touch(videos / "v" / "2.mp4")
    (videos / "prompt.txt").write_text("In this video, a cat jumps\nThe video shows a dog running\n")
    (videos / "video.txt").write_text("v/1.mp4\nv/2.mp4\n")
    stills = tmp_path / "stills"
    touch(stills / "red.png")
    (stills / "red.png").with_suffix(".txt").write_text("This image shows a red square")
    return write_json(tmp_path / "training.json", {"datasets": [
        {"data_root": str(videos), "dataset_type": "video", "id_token": "PIKA", "video_resolution_buckets":
         [[17, 64, 96], [9, 64, 96]], "reshape_mode": "bicubic", "remove_common_llm_caption_prefixes": True},
        {"data_root": str(stills), "dataset_type": "image", "image_resolution_buckets": [[64, 96]]},
    ]})


def test_dataset_config_lists_every_dataset_with_its_own_settings(tmp_path: Path, caplog) -> None:
    config_path = _two_datasets(tmp_path)
    config = build_config({"dataset_config": str(config_path), "id_token": "RUN"}).resolved()
    # The run trains on every dataset's buckets; each dataset's clips are bucketed among its own only.
    assert [str(b) for b in config.data.video_resolution_buckets] == ["17x64x96", "9x64x96", "1x64x96"]
    with caplog.at_level(logging.WARNING, logger="ray_ltx.data.sources"):
        records, skips, layout = read_records(config)
    by_caption = {r.caption: r for r in records}
    assert layout == "dataset_config" and not skips
    # Its own id token (--id_token only for datasets without one), LLM openers stripped where asked.
    assert set(by_caption) == {"PIKA a cat jumps", "PIKA a dog running", "RUN This image shows a red square"}
    assert by_caption["PIKA a cat jumps"].buckets == "17x64x96 9x64x96"
    assert by_caption["RUN This image shows a red square"].buckets == "1x64x96"
    assert by_caption["PIKA a cat jumps"].rel_path == str(tmp_path / "videos-ds" / "v" / "1.mp4")
    assert "reshape_mode bicubic is ignored" in caplog.text
    assert build_config(config.to_dict()).resolved() == config  # resolving again changes nothing


def test_same_clips_at_two_resolutions_are_two_samples_and_a_repeated_dataset_is_a_duplicate(tmp_path: Path) -> None:
    root = tmp_path / "clips"
    touch(root / "a.mp4")
    (root / "a.txt").write_text("a cat")
    low = {"data_root": str(root), "video_resolution_buckets": [[9, 64, 96]]}
    high = {"data_root": str(root), "video_resolution_buckets": [[9, 128, 192]]}
    write_json(tmp_path / "multi.json", {"datasets": [low, high, low]})
    records, skips, _ = read_records(build_config({"dataset_config": str(tmp_path / "multi.json")}).resolved())
    assert sorted(r.buckets for r in records) == ["9x128x192", "9x64x96"]
    assert [s.reason for s in skips] == ["duplicate"] and "multi.json datasets[2]" in skips[0].detail


def test_dataset_config_without_buckets_uses_the_flag_and_reads_metadata_files_as_named(
        tmp_path: Path, monkeypatch) -> None:
    path = _ltx_dataset(tmp_path / "ltx", "json")
    touch(tmp_path / "other" / "c.mp4")
    (tmp_path / "other" / "meta.csv").write_text("clip,words\nc.mp4,a green triangle\n")
    write_json(tmp_path / "training.json", {"datasets": [
        {"dataset_file": "ltx/dataset.json"},
        {"dataset_file": "other/meta.csv", "rename_columns": {"words": "caption", "clip": "video"}},
    ]})
    monkeypatch.chdir(tmp_path)  # finetrainers opens the paths of a dataset config as given
    by_caption, skips, _ = listed(dataset_config="training.json", video_resolution_buckets=["9x64x96"])
    assert set(by_caption) == {"a red circle rises", "a still square", "a green triangle"} and not skips
    assert by_caption["a still square"].path == str(path.parent / "scenes" / "b.png")
    assert by_caption["a still square"].buckets == ""  # the run's --video_resolution_buckets


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"datasets": [{"data_root": "x", "id_tokne": "T"}]}, ["training.json", "datasets[0]", "'id_tokne'",
                                                               "did you mean 'id_token'"]),
        ({"datasets": [], "seed": 1}, ["training.json", "'seed'"]),
        ({"datasets": []}, ["empty"]),
        ([{"data_root": "x"}], ['{"datasets"']),
        ({"datasets": [{"dataset_type": "video"}]}, ["datasets[0]", "data_root", "dataset_file"]),
        ({"datasets": [{"data_root": "x", "dataset_type": "audio"}]}, ["dataset_type", "'audio'"]),
        ({"datasets": [{"data_root": "x", "video_resolution_buckets": [[48, 512, 768]]}]},
         ["datasets[0].video_resolution_buckets", "8k+1"]),
        ({"datasets": [{"data_root": "x", "video_resolution_buckets": [512, 768]}]},
         ["video_resolution_buckets", "[49, 512, 768]"]),
        ({"datasets": [{"data_root": "x", "reshape_mode": "stretch"}]}, ["reshape_mode", "center_crop"]),
        ({"datasets": [{"data_root": "x", "video_resolution_buckets": [[9, 64, 96]]}, {"data_root": "y"}]},
         ["datasets[1]", "every dataset its buckets"]),
    ],
)
def test_malformed_dataset_config_says_what_and_where(document: Any, message: list[str], tmp_path: Path) -> None:
    path = write_json(tmp_path / "training.json", document)
    with pytest.raises(ConfigError) as error:
        build_config({"dataset_config": str(path)}).resolved()
    assert all(part in str(error.value) for part in message), str(error.value)


def test_dataset_config_conflicts_and_missing_data_are_refused(tmp_path: Path) -> None:
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('{"datasets": [\n  {"data_root": "x",}\n]}')
    with pytest.raises(ConfigError, match=r"bad.json line 2"):
        build_config({"dataset_config": str(bad_json)}).resolved()
    path = write_json(tmp_path / "training.json", {"datasets": [
        {"data_root": "finetrainers/crush-smol", "video_resolution_buckets": [[9, 64, 96]]}]})
    args = build_parser().parse_args(["preprocess", "--dataset_config", str(path), "--data_root", str(tmp_path)])
    with pytest.raises(ConfigError, match="--dataset_config lists the datasets itself"):
        config_from_args(args)
    with pytest.raises(ConfigError, match="disagree"):
        build_config({"dataset_config": str(path), "video_resolution_buckets": ["17x64x96"]}).resolved()
    with pytest.raises(DatasetError, match="huggingface-cli download --repo-type dataset finetrainers/crush-smol"):
        read_records(build_config({"dataset_config": str(path)}).resolved())


# -- finetrainers' --validation_dataset_file and ray-ltx's prompts file ---------------------------

FINETRAINERS_VALIDATION = [
    {"caption": "PIKA a toy car is crushed", "image_path": "", "video_path": "", "num_inference_steps": 30,
     "height": 480, "width": 704, "num_frames": 49, "frame_rate": 25},
    {"caption": "PIKA a cake is crushed", "image_path": "first.png", "video_path": "clip.mp4",
     "num_inference_steps": "", "height": "", "width": "", "num_frames": "", "frame_rate": ""},
]


def test_finetrainers_validation_file_as_csv_and_json_gives_the_same_items(tmp_path: Path, monkeypatch,
                                                                            caplog) -> None:
    monkeypatch.chdir(tmp_path)
    write_image(tmp_path / "first.png", moving_shape_frames(1, 64, 96)[0])
    with (tmp_path / "validation.csv").open("w", newline="") as out:
        writer = csv.DictWriter(out, list(FINETRAINERS_VALIDATION[0]))
        writer.writeheader()
        writer.writerows(FINETRAINERS_VALIDATION)
    write_json(tmp_path / "validation.json", {"data": FINETRAINERS_VALIDATION})
    with caplog.at_level(logging.WARNING, logger="ray_ltx.data.validation_set"):
        from_csv = read_validation_dataset("validation.csv")
    assert from_csv == read_validation_dataset(str(tmp_path / "validation.json")) == [
        ValidationItem("PIKA a toy car is crushed", height=480, width=704, num_frames=49, num_inference_steps=30,
                       frame_rate=25.0),
        ValidationItem("PIKA a cake is crushed", image=str(tmp_path / "first.png")),  # empty: the run's defaults
    ]
    assert "row 2: video_path is ignored" in caplog.text


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"caption": ""}, ["row 1", "column caption", "empty"]),
        ({"caption": "a cat", "height": 500}, ["row 1", "column height", "multiple of 32", "e.g. 480"]),
        ({"caption": "a cat", "num_frames": "many"}, ["column num_frames", "'many'", "whole number"]),
        ({"caption": "a cat", "num_inference_steps": "2.5"}, ["column num_inference_steps", "whole number"]),
        ({"caption": "a cat", "frame_rate": "-1"}, ["column frame_rate", "above 0"]),
        ({"caption": "a cat", "image_path": "missing.png"}, ["column image_path", "no such image 'missing.png'"]),
    ],
)
def test_bad_validation_rows_name_file_row_and_column(row: dict[str, Any], message: list[str],
                                                      tmp_path: Path) -> None:
    path = tmp_path / "validation.csv"
    with path.open("w", newline="") as out:
        writer = csv.DictWriter(out, list(row))
        writer.writeheader()
        writer.writerow(row)
    with pytest.raises(ConfigError) as error:
        read_validation_dataset(str(path))
    assert all(part in str(error.value) for part in [str(path), *message]), str(error.value)


def test_validation_prompts_file_formats_and_every_source_together(tmp_path: Path) -> None:
    lines = tmp_path / "prompts.txt"
    lines.write_text('a red circle\n\n{"prompt": "a blue square", "height": 64, "width": 96, "num_frames": 9}\n')
    assert read_validation_prompts(str(lines)) == [
        ValidationItem("a red circle"), ValidationItem("a blue square", height=64, width=96, num_frames=9)]
    listed_yaml = tmp_path / "prompts.yaml"
    listed_yaml.write_text("- a red circle\n- prompt: a blue square\n  num_inference_steps: 4\n")
    assert read_validation_prompts(str(listed_yaml))[1] == ValidationItem("a blue square", num_inference_steps=4)
    typo = tmp_path / "typo.txt"
    typo.write_text('a cat\n{"prompt": "a dog", "hieght": 64}\n')
    with pytest.raises(ConfigError, match=r"typo.txt line 2: unknown key 'hieght'"):
        read_validation_prompts(str(typo))
    write_json(tmp_path / "validation.json", {"data": [{"caption": "from finetrainers"}]})
    config = build_config({"validation_prompts": ["inline"], "validation_prompts_file": str(lines),
                           "validation_dataset_file": str(tmp_path / "validation.json")})
    assert [item.prompt for item in validation_items(config.validation)] == [
        "inline", "a red circle", "a blue square", "from finetrainers"]


# -- finetrainers' spellings of ray-ltx settings --------------------------------------------------


def test_finetrainers_optimizer_name_is_an_alias_kept_canonical() -> None:
    args = build_parser().parse_args(["train", "--optimizer", "adamw-bnb-8bit"])
    config = config_from_args(args)
    assert config.optimizer.optimizer == "adamw8bit" and config.to_dict()["optimizer"]["optimizer"] == "adamw8bit"
    with pytest.raises(ConfigError, match="adam-bnb-8bit"):
        build_config({"optimizer": "adam-bnb-8bit"})  # no ray-ltx equivalent: refused, not guessed


# -- end to end: a dataset config through Ray Data into the cache ---------------------------------


@pytest.mark.usefixtures("ray_cluster")
def test_dataset_config_preprocesses_each_dataset_into_its_own_buckets(tiny_model: Path, sample_data: Path,
                                                                        tmp_path: Path) -> None:
    from ray_ltx.data.pipeline import preprocess
    from ray_ltx.data.video import probe

    # Dataset 1: the sample clips as LTX-Video-Trainer's dataset.json, bucketed at 17 frames only.
    clips = tmp_path / "ltx"
    shutil.copytree(sample_data / "videos", clips / "videos")
    prompts = (sample_data / "prompts.txt").read_text().splitlines()
    videos = (sample_data / "videos.txt").read_text().splitlines()
    write_json(clips / "dataset.json", [{"caption": c, "media_path": v} for c, v in zip(prompts, videos, strict=True)])
    long_enough = sum(probe(str(clips / v)).num_frames >= 17 for v in videos)
    # Dataset 2: two stills with .txt captions as LLMs write them, bucketed as 1-frame clips.
    stills = tmp_path / "stills"
    for name, seed in (("a", 1), ("b", 2)):
        write_image(stills / f"{name}.png", moving_shape_frames(1, 96, 128, seed=seed)[0])
        (stills / f"{name}.txt").write_text(f"This image shows shape {name}")
    config_path = write_json(tmp_path / "training.json", {"datasets": [
        {"dataset_file": str(clips / "dataset.json"), "id_token": "LTX_A", "video_resolution_buckets": [[17, 64, 96]]},
        {"data_root": str(stills), "dataset_type": "image", "image_resolution_buckets": [[64, 96]],
         "remove_common_llm_caption_prefixes": True},
    ]})
    config = base_config(tiny_model, None, tmp_path / "out", dataset_config=str(config_path), id_token=None,
                         video_resolution_buckets=["17x64x96", "1x64x96"])  # as the datasets say: agreed
    manifest = preprocess(config)
    assert manifest.buckets == ["17x64x96", "1x64x96"]
    # Short clips are too short for their dataset's buckets: not turned into 1-frame samples of the other's.
    assert manifest.counts_per_bucket() == {"17x64x96": long_enough, "1x64x96": 2}
    assert manifest.skips_per_reason() == {"too_short": len(videos) - long_enough}
    cache = cache_lib.LatentCache.open(str(tmp_path / "out" / "cache"))
    captions = {row["caption"] for row in cache.read(cache.sample_ids())}
    assert {"shape a", "shape b"} < captions
    assert sum(c.startswith("LTX_A ") for c in captions) == long_enough
