"""Datasets and validation files as the other trainers write them: finetrainers' validation file (and
ray-ltx's own prompts file) parsed to the same ValidationItems, and finetrainers' spellings of settings.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from ray_ltx.cli import build_parser, config_from_args
from ray_ltx.config import build_config
from ray_ltx.data.samples import moving_shape_frames, write_image
from ray_ltx.data.validation_set import (
    ValidationItem,
    read_validation_dataset,
    read_validation_prompts,
    validation_items,
)
from ray_ltx.errors import ConfigError


def write_json(path: Path, value: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value))
    return path



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
