"""What to render at validation: prompts with optional per-prompt settings, read from the config's files.

Two file formats, one result (a list of :class:`ValidationItem`):

- finetrainers' ``--validation_dataset_file``: CSV, JSON (``{"data": [...]}``) or JSONL rows of ``caption``
  and optional ``image_path``, ``video_path``, ``num_inference_steps``, ``height``, ``width``,
  ``num_frames``, ``frame_rate``;
- ray-ltx's ``--validation_prompts_file``: one prompt a line, or a line holding a JSON object
  (``{"prompt": ..., "height": ..., ...}``), or a YAML/JSON list of prompts or such objects.

A field left empty is ``None``: the run's ``validation_*`` default applies. Relative image paths are
relative to the current directory, as in finetrainers, and come back absolute, so parse on the driver.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from dataclasses import dataclass, fields
from typing import Any

import yaml

from ray_ltx import storage
from ray_ltx.config import ValidationConfig
from ray_ltx.errors import ConfigError

log = logging.getLogger(__name__)

DATASET_COLUMNS = ("caption", "image_path", "video_path", "num_inference_steps", "height", "width", "num_frames",
                   "frame_rate")
SIDE_MULTIPLE = 32  # LTXPipeline refuses other heights and widths


@dataclass(frozen=True)
class ValidationItem:
    """One validation video to render; ``None`` fields take the run's defaults."""

    prompt: str
    height: int | None = None
    width: int | None = None
    num_frames: int | None = None
    image: str | None = None  # first-frame image (image-to-video), an absolute path or URI
    num_inference_steps: int | None = None
    frame_rate: float | None = None


ITEM_FIELDS = tuple(f.name for f in fields(ValidationItem))


def validation_items(validation: ValidationConfig) -> list[ValidationItem]:
    """Every validation video of a run: the inline prompts, then the prompts file, then the dataset file."""
    items = [ValidationItem(_prompt(p, "--validation_prompts")) for p in validation.validation_prompts]
    if validation.validation_prompts_file:
        items += read_validation_prompts(validation.validation_prompts_file)
    if validation.validation_dataset_file:
        items += read_validation_dataset(validation.validation_dataset_file)
    return items


# -- finetrainers' --validation_dataset_file ------------------------------------------------------


def read_validation_dataset(path: str) -> list[ValidationItem]:
    """The rows of a finetrainers validation dataset file (CSV, JSON or JSONL)."""
    text = _read(path, "--validation_dataset_file")
    lower = path.lower()
    if lower.endswith(".csv"):
        try:
            rows = [(f"row {n}", row) for n, row in enumerate(csv.DictReader(io.StringIO(text)), start=1)]
        except csv.Error as error:
            raise ConfigError(f"{path}: not valid CSV ({error})") from None
    elif lower.endswith(".jsonl"):
        rows = [(f"line {n}", _json(line, f"{path} line {n}")) for n, line in enumerate(text.splitlines(), start=1)
                if line.strip()]
    elif lower.endswith(".json"):
        document = _json(text, path)
        data = document.get("data") if isinstance(document, dict) else document
        if not isinstance(data, list):
            raise ConfigError(f'{path}: a JSON validation file holds {{"data": [{{"caption": ...}}, ...]}}')
        rows = [(f"data[{i}]", row) for i, row in enumerate(data)]
    else:
        raise ConfigError(f"{path}: --validation_dataset_file must end in .csv, .json or .jsonl (parquet and arrow "
                          "are not read; export them to CSV)")
    if not rows:
        raise ConfigError(f"{path}: holds no rows; add at least one caption")
    unknown = sorted({key for _, row in rows if isinstance(row, dict) for key in row} - set(DATASET_COLUMNS))
    if unknown:
        log.warning("%s: columns %s are not read by ray-ltx and are ignored (it reads %s)", path, ", ".join(unknown),
                    ", ".join(DATASET_COLUMNS))
    items = []
    for where, row in rows:
        if not isinstance(row, dict):
            raise ConfigError(f"{path} {where}: must be an object with a caption, got {row!r}")
        where = f"{path} {where}"
        if not _empty(row.get("video_path")):
            log.warning("%s: video_path is ignored: ray-ltx validates text-to-video (with image_path: "
                        "image-to-video)", where)
        items.append(ValidationItem(
            prompt=_prompt(row.get("caption"), f"{where}, column caption"),
            height=_side(row.get("height"), f"{where}, column height"),
            width=_side(row.get("width"), f"{where}, column width"),
            num_frames=_count(row.get("num_frames"), f"{where}, column num_frames"),
            image=_image(row.get("image_path"), f"{where}, column image_path"),
            num_inference_steps=_count(row.get("num_inference_steps"), f"{where}, column num_inference_steps"),
            frame_rate=_rate(row.get("frame_rate"), f"{where}, column frame_rate"),
        ))
    return items


# -- ray-ltx's --validation_prompts_file ----------------------------------------------------------


def read_validation_prompts(path: str) -> list[ValidationItem]:
    """One prompt a line (a line may be a JSON object), or a YAML/JSON list of prompts or objects."""
    text = _read(path, "--validation_prompts_file")
    lower = path.lower()
    if lower.endswith((".yaml", ".yml")) or (lower.endswith(".json") and text.lstrip().startswith("[")):
        try:
            document = yaml.safe_load(text)
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark else ""
            raise ConfigError(f"{path}{where}: not valid YAML/JSON ({getattr(error, 'problem', error)})") from None
        if not isinstance(document, list):
            raise ConfigError(f"{path}: a YAML/JSON prompts file holds a list of prompts or "
                              "{prompt, height, width, num_frames} objects")
        entries = [(f"{path} item {i}", entry) for i, entry in enumerate(document)]
    else:
        entries = []
        for number, line in enumerate(text.splitlines(), start=1):
            line = line.strip()
            if line:
                where = f"{path} line {number}"
                entries.append((where, _json(line, where) if line.startswith("{") else line))
    if not entries:
        raise ConfigError(f"{path}: holds no prompts; write one prompt a line")
    return [_native_item(entry, where) for where, entry in entries]


def _native_item(entry: Any, where: str) -> ValidationItem:
    if isinstance(entry, str):
        return ValidationItem(_prompt(entry, where))
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: a prompt or an object with a prompt, got {entry!r}")
    for key in entry:
        if key not in ITEM_FIELDS:
            raise ConfigError(f"{where}: unknown key '{key}'; the keys are {', '.join(ITEM_FIELDS)}")
    return ValidationItem(
        prompt=_prompt(entry.get("prompt"), f"{where}, key prompt"),
        height=_side(entry.get("height"), f"{where}, key height"),
        width=_side(entry.get("width"), f"{where}, key width"),
        num_frames=_count(entry.get("num_frames"), f"{where}, key num_frames"),
        image=_image(entry.get("image"), f"{where}, key image"),
        num_inference_steps=_count(entry.get("num_inference_steps"), f"{where}, key num_inference_steps"),
        frame_rate=_rate(entry.get("frame_rate"), f"{where}, key frame_rate"),
    )


# -- values ---------------------------------------------------------------------------------------


def _read(path: str, flag: str) -> str:
    if not storage.is_file(path):
        raise ConfigError(f"{flag} {path}: not found; pass an existing file")
    try:
        return storage.read_bytes(path).decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text; save it as UTF-8") from None


def _json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        line = f" line {error.lineno}" if "\n" in text.strip() else ""
        raise ConfigError(f"{where}{line}: not valid JSON ({error.msg})") from None


def _empty(value: Any) -> bool:
    """CSV cells are '' when empty; JSON writes null or ''."""
    return value is None or (isinstance(value, str) and not value.strip())


def _prompt(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: the prompt is missing or empty; every row needs a caption")
    return " ".join(value.split())


def _number(value: Any, where: str, kind: str) -> float | None:
    if _empty(value):
        return None
    if isinstance(value, bool):
        raise ConfigError(f"{where}: {value!r} is not {kind}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: {value!r} is not {kind}") from None
    if not math.isfinite(number) or number <= 0:
        raise ConfigError(f"{where}: {value!r} must be {kind} above 0")
    return number


def _count(value: Any, where: str) -> int | None:
    number = _number(value, where, "a whole number")
    if number is None:
        return None
    if not number.is_integer():
        raise ConfigError(f"{where}: {value!r} is not a whole number")
    return int(number)


def _side(value: Any, where: str) -> int | None:
    side = _count(value, where)
    if side is not None and side % SIDE_MULTIPLE:
        raise ConfigError(f"{where}: {side} must be a multiple of {SIDE_MULTIPLE} (LTX-Video renders 32x32-pixel "
                          f"cells), e.g. {max(SIDE_MULTIPLE, side // SIDE_MULTIPLE * SIDE_MULTIPLE)}")
    return side


def _rate(value: Any, where: str) -> float | None:
    return _number(value, where, "a frame rate")


def _image(value: Any, where: str) -> str | None:
    if _empty(value):
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{where}: {value!r} is not a path")
    path = storage.absolute(value.strip())
    if not storage.is_file(path):
        raise ConfigError(f"{where}: no such image {value!r} (looked at {path}); relative paths are relative to "
                          "the current directory")
    return path
