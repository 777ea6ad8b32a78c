"""Dataset layouts: turn a dataset on disk or an object store into (caption, media path) records.

Supported layouts:

- **finetrainers**: ``data_root/prompts.txt`` and ``data_root/videos.txt``, one entry a line,
  paths relative to data_root (file names set by ``caption_column`` / ``video_column``);
- **metadata**: a CSV, JSON (list of objects) or JSONL file with a caption column and a path column;
- **folder**: every clip or image under data_root with a same-named ``.txt`` caption beside it.

Problems with single entries (empty caption, a path escaping data_root, a caption that is not
UTF-8, a duplicate) are returned as skips with a reason, never raised; problems with the
dataset as a whole (no data_root, mismatched line counts, a missing column) raise DatasetError.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import posixpath
from dataclasses import asdict, dataclass

from ray_ltx import storage
from ray_ltx.config import Config
from ray_ltx.errors import DatasetError
from ray_ltx.redaction import redact

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mov", ".mkv", ".avi", ".gif", ".m4v")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
METADATA_FILES = ("metadata.csv", "metadata.jsonl", "metadata.json")
PATH_COLUMNS = ("video", "video_path", "path", "file_name", "file", "image", "media")
CAPTION_COLUMNS = ("caption", "prompt", "text", "description")


@dataclass(frozen=True)
class Record:
    """One (caption, media) pair to preprocess."""

    sample_id: str
    caption: str
    path: str  # full path or URI, readable through ray_ltx.storage
    rel_path: str  # as the dataset names it, for reports
    where: str  # e.g. "videos.txt line 3", for messages

    def to_row(self) -> dict[str, str]:
        return asdict(self)


@dataclass(frozen=True)
class Skip:
    """An input left out of the cache, and why."""

    path: str
    reason: str
    detail: str

    def to_row(self) -> dict[str, str]:
        return asdict(self)


def sample_id(rel_path: str, caption: str) -> str:
    """Stable id of a (media, caption) pair: reruns find what was already encoded."""
    return hashlib.sha1(f"{rel_path}\0{caption}".encode()).hexdigest()[:20]


def is_media(path: str) -> bool:
    return path.lower().endswith(VIDEO_EXTENSIONS + IMAGE_EXTENSIONS)


def is_image(path: str) -> bool:
    return path.lower().endswith(IMAGE_EXTENSIONS)


def detect_layout(config: Config) -> str:
    data = config.data
    if data.dataset_layout != "auto":
        return data.dataset_layout
    if data.dataset_file:
        return "metadata"
    root = data.data_root or ""
    if storage.is_file(storage.join(root, data.caption_column)) and storage.is_file(
        storage.join(root, data.video_column)
    ):
        return "finetrainers"
    if any(storage.is_file(storage.join(root, name)) for name in METADATA_FILES):
        return "metadata"
    return "folder"


def check_data_root(config: Config) -> str:
    root = config.data.data_root
    if not root:
        raise DatasetError(
            "no dataset given: set --data_root to the folder (or URI) holding your videos, "
            "e.g. --data_root /data/my-clips"
        )
    try:
        ok = storage.is_dir(root)
    except OSError as error:
        raise DatasetError(f"--data_root {root}: cannot be read ({error}); check the path and permissions") from None
    if not ok:
        raise DatasetError(
            f"--data_root {root}: no such directory; pass the folder that holds prompts.txt/videos.txt, "
            "a metadata file, or the clips with their .txt captions"
        )
    return root


def read_records(config: Config) -> tuple[list[Record], list[Skip], str]:
    """All records of the dataset, the entries skipped while listing it, and the layout used.

    Its errors name files by their URIs, redacted: a data_root may carry credentials (s3://KEY:SECRET@...).
    """
    try:
        root = check_data_root(config)
        layout = detect_layout(config)
        reader = {"finetrainers": _read_finetrainers, "metadata": _read_metadata, "folder": _read_folder}[layout]
        records, skips = reader(config, root)
    except DatasetError as error:
        raise DatasetError(redact(str(error))) from None
    unique: dict[str, Record] = {}
    for record in records:
        if record.sample_id in unique:
            skips.append(Skip(record.rel_path, "duplicate", f"{record.where} repeats {unique[record.sample_id].where}"))
        else:
            unique[record.sample_id] = record
    if config.data.id_token:
        token = config.data.id_token.strip()
        unique = {
            key: Record(r.sample_id, f"{token} {r.caption}", r.path, r.rel_path, r.where) for key, r in unique.items()
        }
    return list(unique.values()), skips, layout


def _resolve(root: str, rel: str, where: str) -> tuple[str | None, Skip | None]:
    """Full path of a dataset entry, or a skip if it escapes data_root."""
    rel = rel.strip()
    if storage.is_uri(rel) or rel.startswith("/"):
        return None, Skip(rel, "path_outside_data_root", f"{where}: absolute paths are not allowed; "
                          "list paths relative to data_root")
    normal = posixpath.normpath(rel.replace("\\", "/"))
    if normal == ".." or normal.startswith("../"):
        return None, Skip(rel, "path_outside_data_root", f"{where}: '{rel}' points outside data_root")
    return storage.join(root, normal), None


def _decode_lines(data: bytes, name: str) -> list[tuple[int, str | None]]:
    """(line number, text or None when the line is not UTF-8) for each line."""
    lines = []
    for number, raw in enumerate(data.splitlines(), start=1):
        try:
            lines.append((number, raw.decode("utf-8").lstrip("\ufeff")))
        except UnicodeDecodeError:
            lines.append((number, None))
    return lines


def _read_lines_file(root: str, name: str, flag: str) -> list[tuple[int, str | None]]:
    path = storage.join(root, name)
    if not storage.is_file(path):
        raise DatasetError(f"{path}: not found; the finetrainers layout needs {flag} naming a file in data_root")
    lines = _decode_lines(storage.read_bytes(path), name)
    while lines and lines[-1][1] is not None and not lines[-1][1].strip():
        lines.pop()  # trailing blank lines are not entries
    return lines


def _make_record(root: str, rel: str, caption: str | None, where: str) -> tuple[Record | None, Skip | None]:
    if caption is None:
        return None, Skip(rel, "caption_not_utf8", f"{where}: the caption is not UTF-8 text; re-save it as UTF-8")
    caption = " ".join(caption.split())
    if not caption:
        return None, Skip(rel, "empty_caption", f"{where}: the caption is empty")
    if not rel.strip():
        return None, Skip(rel, "missing_file", f"{where}: no media path given")
    path, skip = _resolve(root, rel, where)
    if skip:
        return None, skip
    return Record(sample_id(rel.strip(), caption), caption, path, rel.strip(), where), None


def _read_finetrainers(config: Config, root: str) -> tuple[list[Record], list[Skip]]:
    data = config.data
    captions = _read_lines_file(root, data.caption_column, "--caption_column")
    videos = _read_lines_file(root, data.video_column, "--video_column")
    if len(captions) != len(videos):
        raise DatasetError(
            f"{storage.join(root, data.caption_column)} has {len(captions)} lines but "
            f"{storage.join(root, data.video_column)} has {len(videos)}: they must match line by line "
            "(one caption for each video path)"
        )
    records, skips = [], []
    for (number, caption), (_, video) in zip(captions, videos, strict=True):
        if video is None:
            skips.append(Skip(f"{data.video_column}:{number}", "path_not_utf8", f"{data.video_column} line {number}"))
            continue
        record, skip = _make_record(root, video, caption, f"{data.caption_column}/{data.video_column} line {number}")
        records.append(record) if record else skips.append(skip)
    return records, skips


def _metadata_path(config: Config, root: str) -> str:
    if config.data.dataset_file:
        name = config.data.dataset_file
        path = name if storage.is_uri(name) or name.startswith("/") else storage.join(root, name)
        if not storage.is_file(path):
            raise DatasetError(f"--dataset_file {name}: not found (looked at {path})")
        return path
    for name in METADATA_FILES:
        path = storage.join(root, name)
        if storage.is_file(path):
            return path
    raise DatasetError(f"no metadata file in {root}: pass --dataset_file (CSV, JSON or JSONL)")


def _parse_metadata(path: str) -> list[dict]:
    data = storage.read_bytes(path)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise DatasetError(f"{path} line {line}: not UTF-8 text; re-save the metadata file as UTF-8") from None
    lower = path.lower()
    try:
        if lower.endswith(".csv"):
            return list(csv.DictReader(io.StringIO(text)))
        if lower.endswith(".jsonl"):
            rows = []
            for number, line in enumerate(text.splitlines(), start=1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as error:
                        raise DatasetError(f"{path} line {number}: not valid JSON ({error.msg})") from None
            return rows
        if lower.endswith(".json"):
            rows = json.loads(text)
            if isinstance(rows, dict) and len(rows) == 1 and isinstance(next(iter(rows.values())), list):
                rows = next(iter(rows.values()))
            if not isinstance(rows, list):
                raise DatasetError(f"{path}: a JSON metadata file must hold a list of objects")
            return rows
    except json.JSONDecodeError as error:
        raise DatasetError(f"{path} line {error.lineno}: not valid JSON ({error.msg})") from None
    except csv.Error as error:
        raise DatasetError(f"{path}: not valid CSV ({error})") from None
    raise DatasetError(f"{path}: metadata files must end in .csv, .json or .jsonl")


def _pick_column(config: Config, columns: list[str], flag: str, configured: str, fallbacks: tuple[str, ...],
                 path: str) -> str:
    if configured in columns:
        return configured
    # finetrainers defaults (prompts.txt/videos.txt) name files, not columns: then guess the column.
    if configured == type(config.data).model_fields[flag].default:
        for name in fallbacks:
            if name in columns:
                return name
    raise DatasetError(
        f"{path}: no column '{configured}' for {flag}; its columns are {columns}. "
        f"Pass {flag} with the right column name"
    )


def _read_metadata(config: Config, root: str) -> tuple[list[Record], list[Skip]]:
    path = _metadata_path(config, root)
    rows = _parse_metadata(path)
    if not rows:
        raise DatasetError(f"{path}: holds no rows")
    if not all(isinstance(row, dict) for row in rows):
        raise DatasetError(f"{path}: every entry must be an object with caption and path fields")
    columns = list(dict.fromkeys(key for row in rows for key in row))
    name = posixpath.basename(path)
    video_col = _pick_column(config, columns, "video_column", config.data.video_column, PATH_COLUMNS, path)
    caption_col = _pick_column(config, columns, "caption_column", config.data.caption_column, CAPTION_COLUMNS, path)
    records, skips = [], []
    for number, row in enumerate(rows, start=1):
        video, caption = row.get(video_col), row.get(caption_col)
        where = f"{name} row {number}"
        record, skip = _make_record(root, str(video or ""), "" if caption is None else str(caption), where)
        records.append(record) if record else skips.append(skip)
    return records, skips


def _read_folder(config: Config, root: str) -> tuple[list[Record], list[Skip]]:
    files = storage.list_files(root)
    names = set(files)
    records, skips = [], []
    base = root.rstrip("/") + "/"
    for path in files:
        if not is_media(path):
            continue
        rel = path[len(base):] if path.startswith(base) else posixpath.basename(path)
        caption_path = posixpath.splitext(path)[0] + ".txt"
        if caption_path not in names:
            skips.append(Skip(rel, "missing_caption", f"no caption file {posixpath.basename(caption_path)} beside it"))
            continue
        raw = storage.read_bytes(caption_path)
        try:
            caption: str | None = raw.decode("utf-8-sig")
        except UnicodeDecodeError:
            caption = None
        record, skip = _make_record(root, rel, caption, f"{rel} (+ .txt caption)")
        records.append(record) if record else skips.append(skip)
    if not records and not skips:
        raise DatasetError(
            f"{root}: found no prompts.txt/videos.txt, no metadata file and no clips with .txt captions; "
            "see the README's 'Datasets' section for the supported layouts"
        )
    return records, skips
