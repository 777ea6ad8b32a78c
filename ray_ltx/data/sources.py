"""Dataset layouts: turn a dataset on disk or an object store into (caption, media path) records.

Supported layouts (docs/datasets.md shows each with a worked example):

- **finetrainers**: ``data_root/prompts.txt`` and ``data_root/videos.txt``, one entry a line,
  paths relative to data_root (file names set by ``caption_column`` / ``video_column``; left at
  their defaults, finetrainers' other names are found too: prompt.txt, captions.txt, video.txt,
  images.txt, ...);
- **metadata**: a CSV, JSON (list of objects) or JSONL file with a caption column and a path column:
  ``metadata.*`` as finetrainers and Hugging Face folders name it, or LTX-Video-Trainer's
  ``dataset.*`` with ``caption`` and ``media_path``;
- **folder**: every clip or image under data_root with a same-named ``.txt`` caption beside it;
- **dataset_config**: finetrainers' ``--dataset_config`` JSON, a list of datasets in any of the
  layouts above, each with its own resolution buckets, id token and caption clean-up.

Problems with single entries (empty caption, a path escaping data_root, a caption that is not
UTF-8, a duplicate) are returned as skips with a reason, never raised; problems with the
dataset as a whole (no data_root, mismatched line counts, a missing column) raise DatasetError,
and a malformed dataset config raises ConfigError.
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import io
import json
import logging
import posixpath
import re
from dataclasses import asdict, dataclass
from typing import Any

from ray_ltx import storage
from ray_ltx.buckets import Bucket
from ray_ltx.config import Config, DataConfig
from ray_ltx.errors import ConfigError, DatasetError
from ray_ltx.redaction import redact

log = logging.getLogger(__name__)

DOCS = "docs/datasets.md"
VIDEO_EXTENSIONS = (".mp4", ".webm", ".mov", ".mkv", ".avi", ".gif", ".m4v")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
# finetrainers / Hugging Face folders first, then LTX-Video-Trainer's caption_videos.py output.
METADATA_FILES = ("metadata.csv", "metadata.jsonl", "metadata.json", "dataset.json", "dataset.jsonl", "dataset.csv")
PATH_COLUMNS = ("video", "video_path", "media_path", "path", "file_name", "file", "image", "image_path", "media")
CAPTION_COLUMNS = ("caption", "prompt", "text", "description")
# The list-file names finetrainers accepts, tried when caption_column / video_column keep their defaults.
CAPTION_LIST_FILES = ("prompts.txt", "prompt.txt", "captions.txt", "caption.txt")
MEDIA_LIST_FILES = {"video": ("videos.txt", "video.txt"), "image": ("images.txt", "image.txt")}
# finetrainers' remove_common_llm_caption_prefixes: openers that captioning LLMs put before the description.
_LLM_SUBJECTS = ("This video", "The video", "This clip", "The clip", "The animation", "This image", "The image",
                 "This picture", "The picture")
_LLM_VERBS = ("shows", "depicts", "features", "captures", "highlights", "introduces", "presents")
LLM_CAPTION_PREFIXES = ("In the video,", "In this video,", "In this video clip,", "In the clip,", "Caption:",
                        *(f"{subject} {verb}" for subject in _LLM_SUBJECTS for verb in _LLM_VERBS))
RESHAPE_MODES = ("center_crop", "random_crop", "bicubic")
# Keys of a finetrainers dataset-config entry; finetrainers passes the rest to its preprocessing wrapper.
ENTRY_KEYS = ("data_root", "dataset_file", "dataset_type", "id_token", "video_resolution_buckets",
              "image_resolution_buckets", "reshape_mode", "remove_common_llm_caption_prefixes", "rename_columns",
              "drop_columns", "caption_options")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class Record:
    """One (caption, media) pair to preprocess."""

    sample_id: str
    caption: str
    path: str  # full path or URI, readable through ray_ltx.storage
    rel_path: str  # as the dataset names it, for reports
    where: str  # e.g. "videos.txt line 3", for messages
    buckets: str = ""  # space-separated buckets of its dataset (from a dataset config); "" = the run's

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


@dataclass(frozen=True)
class DatasetEntry:
    """One dataset of a finetrainers dataset config, checked."""

    where: str  # "training.json datasets[1]", for messages
    data_root: str | None  # as written in the file
    dataset_file: str | None
    dataset_type: str  # "video" or "image"
    id_token: str | None
    buckets: tuple[str, ...]  # its own buckets (FxHxW); empty: the run's --video_resolution_buckets
    strip_llm_prefixes: bool
    caption_column: str | None  # from rename_columns
    media_column: str | None
    notes: tuple[str, ...] = ()  # settings ray-ltx reads but does not apply, logged when listing


@dataclass(frozen=True)
class Source:
    """One dataset to list, in one layout, and what to do with its captions."""

    root: str
    layout: str  # finetrainers | metadata | folder
    caption_name: str = ""  # finetrainers: the caption list file; metadata: the caption column
    media_name: str = ""  # finetrainers: the media list file; metadata: the path column
    guess_columns: tuple[bool, bool] = (False, False)  # metadata: guess (caption, path) when not found
    metadata_path: str = ""
    label: str = ""  # "" for --data_root; the entry (and the prefix of paths in reports) for a dataset config
    id_token: str | None = None  # the entry's own token: part of the sample id
    run_id_token: str | None = None  # --id_token: in the cache fingerprint instead
    strip_llm_prefixes: bool = False
    notes: tuple[str, ...] = ()
    buckets: str = ""
    display_root: str = ""  # the entry's data_root as written, prefixed to its paths in reports


def sample_id(rel_path: str, caption: str) -> str:
    """Stable id of a (media, caption) pair: reruns find what was already encoded."""
    return hashlib.sha1(f"{rel_path}\0{caption}".encode()).hexdigest()[:20]


def is_media(path: str) -> bool:
    return path.lower().endswith(VIDEO_EXTENSIONS + IMAGE_EXTENSIONS)


def is_image(path: str) -> bool:
    return path.lower().endswith(IMAGE_EXTENSIONS)


def strip_llm_prefix(caption: str) -> str:
    """The caption without the first of finetrainers' common LLM openers it starts with."""
    for prefix in LLM_CAPTION_PREFIXES:
        if caption.startswith(prefix):
            return caption[len(prefix):].strip()
    return caption


def dataset_given(data: DataConfig) -> bool:
    """Whether the config names a dataset to list (else training reads the cache as it is)."""
    return bool(data.data_root or data.dataset_file or data.dataset_config)


def dataset_name(config: Config) -> str:
    """The dataset as the user named it, for messages."""
    data = config.data
    return data.dataset_config or data.data_root or data.dataset_file or "(no dataset)"


# -- reading the whole dataset --------------------------------------------------------------------


def read_records(config: Config) -> tuple[list[Record], list[Skip], str]:
    """All records of the dataset, the entries skipped while listing it, and the layout used.

    Its errors name files by their URIs, redacted: a data_root may carry credentials (s3://KEY:SECRET@...).
    """
    try:
        return _read_records(config)
    except DatasetError as error:
        raise DatasetError(redact(str(error))) from None


def _read_records(config: Config) -> tuple[list[Record], list[Skip], str]:
    """All records of the dataset, the entries skipped while listing it, and the layout used."""
    if config.data.dataset_config:
        if config.data.dataset_layout != "auto":
            raise DatasetError(f"--dataset_layout {config.data.dataset_layout} applies to --data_root; the layout of "
                               "each dataset in --dataset_config is detected on its own (drop --dataset_layout)")
        sources = [_entry_source(config, entry) for entry in read_dataset_config(config.data.dataset_config)]
        layout = "dataset_config"
    else:
        sources = [_flag_source(config)]
        layout = sources[0].layout
    reader = {"finetrainers": _read_lists, "metadata": _read_metadata, "folder": _read_folder}
    unique: dict[str, Record] = {}
    skips: list[Skip] = []
    for source in sources:
        records, source_skips = reader[source.layout](source)
        skips.extend(source_skips)
        for note in source.notes:
            log.warning("%s: %s", source.label, note)
        if source.label:
            log.info("%s: %d clips listed (%s layout in %s)", source.label, len(records), source.layout, source.root)
        for record in records:
            if record.sample_id in unique:
                skips.append(Skip(record.rel_path, "duplicate",
                                  f"{record.where} repeats {unique[record.sample_id].where}"))
            else:
                unique[record.sample_id] = record
    return list(unique.values()), skips, layout


def check_data_root(config: Config) -> str:
    """The folder that entries are relative to: --data_root, else the folder of --dataset_file."""
    data = config.data
    if not data.data_root and data.dataset_file:
        path = storage.absolute(data.dataset_file)
        if not storage.is_file(path):
            raise DatasetError(f"--dataset_file {data.dataset_file}: not found (looked at {path})")
        return posixpath.dirname(path)
    if not data.data_root:
        raise DatasetError(
            "no dataset given: set --data_root to the folder (or URI) holding your videos "
            "(e.g. --data_root /data/my-clips), --dataset_file to a metadata file, or --dataset_config to a "
            f"finetrainers dataset config; see {DOCS}"
        )
    return _check_root(data.data_root, "--data_root")


def _check_root(root: str, what: str, written: str | None = None) -> str:
    written = written or root
    try:
        ok = storage.is_dir(root)
    except OSError as error:
        raise DatasetError(f"{what} {written}: cannot be read ({error}); check the path and permissions") from None
    if ok:
        return root
    looked = f" (looked at {root})" if root != written else ""
    if not storage.is_uri(written) and _HUB_ID.match(written) and not storage.exists(root):
        raise DatasetError(
            f"{what} {written}: no such directory{looked}. If it is a Hugging Face Hub dataset, download it first "
            f"(huggingface-cli download --repo-type dataset {written} --local-dir data/{written.split('/')[-1]}) "
            "and point at that folder: ray-ltx reads local folders and object-store URIs"
        )
    raise DatasetError(
        f"{what} {written}: no such directory{looked}; pass the folder that holds prompts.txt/videos.txt, "
        f"a metadata file, or the clips with their .txt captions (see {DOCS})"
    )


def _flag_source(config: Config) -> Source:
    """The one dataset of --data_root / --dataset_file."""
    data = config.data
    root = check_data_root(config)
    common = {"root": root, "run_id_token": data.id_token}
    layout = data.dataset_layout
    if layout == "auto":
        layout = "metadata" if data.dataset_file else _detect_layout(root, data, None)
    if layout == "finetrainers":
        return Source(layout="finetrainers", caption_name=_list_file(root, data, "caption", None),
                      media_name=_list_file(root, data, "media", None), **common)
    if layout == "metadata":
        return Source(layout="metadata", metadata_path=_metadata_path(data.dataset_file, root), **common,
                      **_columns(data, None, None))
    return Source(layout="folder", **common)


# -- finetrainers' --dataset_config ---------------------------------------------------------------


def read_dataset_config(path: str) -> list[DatasetEntry]:
    """The checked entries of a finetrainers dataset config (``{"datasets": [{...}, ...]}``)."""
    name = posixpath.basename(path)
    if not storage.is_file(path):
        raise ConfigError(f"--dataset_config {path}: not found; pass the JSON file listing your datasets "
                          f"(see {DOCS})")
    try:
        document = json.loads(storage.read_bytes(path).decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text; save the dataset config as UTF-8") from None
    except json.JSONDecodeError as error:
        raise ConfigError(f"{path} line {error.lineno}, column {error.colno}: not valid JSON ({error.msg})") from None
    if not isinstance(document, dict) or not isinstance(document.get("datasets"), list):
        raise ConfigError(f'{path}: a dataset config is a JSON object {{"datasets": [{{"data_root": ...}}, ...]}}; '
                          f"see {DOCS}")
    for key in document:
        if key != "datasets":
            raise ConfigError(f"{path}: unknown top-level key '{key}'; a dataset config holds only \"datasets\"")
    if not document["datasets"]:
        raise ConfigError(f'{path}: "datasets" is empty; list at least one dataset')
    return [_check_entry(entry, f"{name} datasets[{index}]", path) for index, entry in enumerate(document["datasets"])]


def _check_entry(entry: Any, where: str, path: str) -> DatasetEntry:
    if not isinstance(entry, dict):
        raise ConfigError(f"{path}: {where} must be an object with data_root or dataset_file, got {entry!r}")
    for key in entry:
        if key not in ENTRY_KEYS:
            close = difflib.get_close_matches(key, ENTRY_KEYS, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"{path}: {where} has unknown key '{key}'{hint}; the keys ray-ltx reads are "
                              f"{', '.join(ENTRY_KEYS)} (see {DOCS})")

    def text(key: str) -> str | None:
        value = entry.get(key)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise ConfigError(f"{path}: {where}.{key} must be a non-empty string, got {value!r}")
        return value

    data_root, dataset_file, id_token = text("data_root"), text("dataset_file"), text("id_token")
    if not data_root and not dataset_file:
        raise ConfigError(f"{path}: {where} needs data_root (a folder) or dataset_file (a CSV/JSON/JSONL file)")
    dataset_type = entry.get("dataset_type", "video")
    if dataset_type not in MEDIA_LIST_FILES:
        raise ConfigError(f"{path}: {where}.dataset_type is {dataset_type!r}; use \"video\" or \"image\"")
    mode = entry.get("reshape_mode")
    if mode is not None and mode not in RESHAPE_MODES:
        raise ConfigError(f"{path}: {where}.reshape_mode is {mode!r}; finetrainers' modes are {', '.join(RESHAPE_MODES)}")
    notes = []
    if mode is not None:
        notes.append(f"reshape_mode {mode} is ignored: ray-ltx always scales a clip to cover its bucket and crops "
                     "the centre (the aspect ratio is kept)")
    strip = entry.get("remove_common_llm_caption_prefixes", False)
    if not isinstance(strip, bool):
        raise ConfigError(f"{path}: {where}.remove_common_llm_caption_prefixes must be true or false, got {strip!r}")
    if entry.get("caption_options"):
        notes.append("caption_options is ignored: it configures webdatasets, which ray-ltx does not read")
    rename = entry.get("rename_columns") or {}
    if not isinstance(rename, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in rename.items()):
        raise ConfigError(f'{path}: {where}.rename_columns must map column names to names, e.g. {{"text": "caption"}}')
    drop = entry.get("drop_columns") or []
    if not isinstance(drop, list):
        raise ConfigError(f"{path}: {where}.drop_columns must be a list of column names")
    caption_column = next((k for k, v in rename.items() if v == "caption"), None)
    media_column = next((k for k, v in rename.items() if v in ("video", "image")), None)
    if {caption_column, media_column} & set(drop):
        raise ConfigError(f"{path}: {where}.drop_columns drops a column that rename_columns uses")
    own, other = ("video", "image") if dataset_type == "video" else ("image", "video")
    if entry.get(f"{other}_resolution_buckets"):
        notes.append(f"{other}_resolution_buckets is ignored: a dataset_type {dataset_type} dataset uses "
                     f"{own}_resolution_buckets")
    buckets = _entry_buckets(entry.get(f"{own}_resolution_buckets"), own, f"{path}: {where}.{own}_resolution_buckets")
    return DatasetEntry(where, data_root, dataset_file, dataset_type, id_token, buckets, strip, caption_column,
                        media_column, tuple(notes))


def _entry_buckets(value: Any, kind: str, where: str) -> tuple[str, ...]:
    """[[F, H, W], ...] (video) or [[H, W], ...] (image, as 1-frame buckets) as FxHxW strings."""
    if value is None:
        return ()
    size = 3 if kind == "video" else 2
    example = "[[49, 512, 768]]" if kind == "video" else "[[512, 768]]"
    if not isinstance(value, list):
        raise ConfigError(f"{where} must be a list like {example}, got {value!r}")
    buckets = []
    for item in value:
        if isinstance(item, str) and kind == "video":  # ray-ltx's own spelling, 49x512x768
            text = item
        elif isinstance(item, list) and len(item) == size and all(isinstance(x, int) for x in item):
            text = "x".join(str(x) for x in ([1, *item] if kind == "image" else item))
        else:
            raise ConfigError(f"{where}: {item!r} is not a bucket; write each as {example[1:-1]}")
        try:
            buckets.append(str(Bucket.parse(text)))
        except ValueError as error:
            raise ConfigError(f"{where}: {error}") from None
    return tuple(dict.fromkeys(buckets))


def run_buckets(dataset_config: str, configured: list[Bucket]) -> list[Bucket]:
    """The run's bucket list with a dataset config: every dataset's own buckets, or --video_resolution_buckets.

    Each dataset's clips are bucketed among its own buckets only; the run trains on all of them.
    """
    entries = read_dataset_config(dataset_config)
    declared = [entry for entry in entries if entry.buckets]
    if not declared:
        return configured
    if len(declared) != len(entries):
        missing = ", ".join(entry.where for entry in entries if not entry.buckets)
        raise ConfigError(f"{dataset_config}: {missing} set no resolution buckets while other datasets do; give "
                          "every dataset its buckets (finetrainers requires them), or none to use "
                          "--video_resolution_buckets for all")
    union = list(dict.fromkeys(bucket for entry in entries for bucket in entry.buckets))
    default = [str(b) for b in DataConfig.model_fields["video_resolution_buckets"].get_default(call_default_factory=True)]
    given = [str(b) for b in configured]
    if given not in (default, union):
        raise ConfigError(f"--video_resolution_buckets {' '.join(given)} and the buckets in {dataset_config} "
                          f"({' '.join(union)}) disagree: set buckets in one place (remove the flag, or remove "
                          "them from every dataset)")
    return [Bucket.parse(bucket) for bucket in union]


def _entry_source(config: Config, entry: DatasetEntry) -> Source:
    """One dataset of a dataset config; relative paths are relative to the current directory, as in finetrainers."""
    data = config.data
    root = None
    if entry.data_root:
        root = _check_root(storage.absolute(entry.data_root), f"{entry.where}: data_root", entry.data_root)
    common = {"label": entry.where, "id_token": entry.id_token, "run_id_token": None if entry.id_token else data.id_token,
              "strip_llm_prefixes": entry.strip_llm_prefixes, "notes": entry.notes, "buckets": " ".join(entry.buckets),
              "display_root": entry.data_root or posixpath.dirname(entry.dataset_file or "")}
    if entry.dataset_file:
        metadata = _metadata_path(entry.dataset_file, root, f"{entry.where}: dataset_file")
        root = root or posixpath.dirname(metadata)
        return Source(root=root, layout="metadata", metadata_path=metadata, **common,
                      **_columns(data, entry.caption_column, entry.media_column))
    assert root is not None
    layout = _detect_layout(root, data, entry.dataset_type)
    if layout == "finetrainers":
        return Source(root=root, layout=layout, caption_name=_list_file(root, data, "caption", entry.dataset_type),
                      media_name=_list_file(root, data, "media", entry.dataset_type), **common)
    if layout == "metadata":
        return Source(root=root, layout=layout, metadata_path=_metadata_path(None, root), **common,
                      **_columns(data, entry.caption_column, entry.media_column))
    return Source(root=root, layout=layout, **common)


# -- layout detection -----------------------------------------------------------------------------


def _list_names(data: DataConfig, kind: str, dataset_type: str | None) -> tuple[str, ...]:
    """The list-file names to look for: the flag as given, or finetrainers' names when it keeps its default."""
    flag = "caption_column" if kind == "caption" else "video_column"
    configured = getattr(data, flag)
    if configured != DataConfig.model_fields[flag].default:
        return (configured,)
    if kind == "caption":
        return CAPTION_LIST_FILES
    types = [dataset_type] if dataset_type else list(MEDIA_LIST_FILES)
    return tuple(name for kind_ in types for name in MEDIA_LIST_FILES[kind_])


def _list_file(root: str, data: DataConfig, kind: str, dataset_type: str | None) -> str:
    names = _list_names(data, kind, dataset_type)
    found = [name for name in names if storage.is_file(storage.join(root, name))]
    flag = "--caption_column" if kind == "caption" else "--video_column"
    if found and found[0] == names[0]:  # ray-ltx's own name (or the flag's) wins over finetrainers' others
        return found[0]
    if not found:
        raise DatasetError(f"{root}: no {' or '.join(names)}; the finetrainers layout needs {flag} naming a "
                           "file in data_root")
    if len(found) > 1:
        raise DatasetError(f"{root}: holds both {found[0]} and {found[1]}; keep one, or pass {flag} {found[0]}")
    return found[0]


def _detect_layout(root: str, data: DataConfig, dataset_type: str | None) -> str:
    def has_any(names: tuple[str, ...]) -> bool:
        return any(storage.is_file(storage.join(root, name)) for name in names)

    if has_any(_list_names(data, "caption", dataset_type)) and has_any(_list_names(data, "media", dataset_type)):
        return "finetrainers"
    if has_any(METADATA_FILES):
        return "metadata"
    return "folder"


def _metadata_path(name: str | None, root: str | None, what: str = "--dataset_file") -> str:
    if name:
        path = name if storage.is_uri(name) or name.startswith("/") or root is None else storage.join(root, name)
        path = storage.absolute(path)
        if not storage.is_file(path):
            raise DatasetError(f"{what} {name}: not found (looked at {path})")
        return path
    assert root is not None
    for candidate in METADATA_FILES:
        path = storage.join(root, candidate)
        if storage.is_file(path):
            return path
    raise DatasetError(f"no metadata file in {root}: pass --dataset_file (CSV, JSON or JSONL)")


def _columns(data: DataConfig, caption: str | None, media: str | None) -> dict[str, Any]:
    """Metadata columns: rename_columns, else the flags, guessed from common names when left at their defaults."""
    caption_guess = caption is None and data.caption_column == DataConfig.model_fields["caption_column"].default
    media_guess = media is None and data.video_column == DataConfig.model_fields["video_column"].default
    return {"caption_name": caption or data.caption_column, "media_name": media or data.video_column,
            "guess_columns": (caption_guess, media_guess)}


# -- the readers ----------------------------------------------------------------------------------


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


def _decode_lines(data: bytes) -> list[tuple[int, str | None]]:
    """(line number, text or None when the line is not UTF-8) for each line."""
    lines = []
    for number, raw in enumerate(data.splitlines(), start=1):
        try:
            lines.append((number, raw.decode("utf-8").lstrip("\ufeff")))
        except UnicodeDecodeError:
            lines.append((number, None))
    return lines


def _read_lines_file(root: str, name: str) -> list[tuple[int, str | None]]:
    lines = _decode_lines(storage.read_bytes(storage.join(root, name)))
    while lines and lines[-1][1] is not None and not lines[-1][1].strip():
        lines.pop()  # trailing blank lines are not entries
    return lines


def _make_record(source: Source, rel: str, caption: str | None, where: str) -> tuple[Record | None, Skip | None]:
    shown = posixpath.join(source.display_root, rel.strip()) if source.label else rel.strip()
    where = f"{source.label}: {where}" if source.label else where
    if caption is None:
        return None, Skip(shown, "caption_not_utf8", f"{where}: the caption is not UTF-8 text; re-save it as UTF-8")
    caption = " ".join(caption.split())
    if source.strip_llm_prefixes:
        caption = strip_llm_prefix(caption)
    if not caption:
        return None, Skip(shown, "empty_caption", f"{where}: the caption is empty")
    if not rel.strip():
        return None, Skip(shown, "missing_file", f"{where}: no media path given")
    path, skip = _resolve(source.root, rel, where)
    if skip:
        return None, Skip(shown, skip.reason, skip.detail)
    if source.id_token:
        caption = f"{source.id_token.strip()} {caption}"
    # A dataset config may list the same clips twice (e.g. at two resolutions): its entries' ids differ.
    key = f"{source.display_root}\0{source.buckets}\0{rel.strip()}" if source.label else rel.strip()
    sid = sample_id(key, caption)
    if source.run_id_token:  # fingerprinted with the cache, so not part of the id
        caption = f"{source.run_id_token.strip()} {caption}"
    return Record(sid, caption, path, shown, where, source.buckets), None


def _read_lists(source: Source) -> tuple[list[Record], list[Skip]]:
    captions = _read_lines_file(source.root, source.caption_name)
    media = _read_lines_file(source.root, source.media_name)
    if len(captions) != len(media):
        raise DatasetError(
            f"{storage.join(source.root, source.caption_name)} has {len(captions)} lines but "
            f"{storage.join(source.root, source.media_name)} has {len(media)}: they must match line by line "
            "(one caption for each media path)"
        )
    records, skips = [], []
    for (number, caption), (_, path) in zip(captions, media, strict=True):
        if path is None:
            skips.append(Skip(f"{source.media_name}:{number}", "path_not_utf8", f"{source.media_name} line {number}"))
            continue
        record, skip = _make_record(source, path, caption, f"{source.caption_name}/{source.media_name} line {number}")
        records.append(record) if record else skips.append(skip)
    return records, skips


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
    raise DatasetError(f"{path}: metadata files must end in .csv, .json or .jsonl (parquet and arrow are not read; "
                       "export them to CSV or JSONL)")


def _pick_column(columns: list[str], configured: str, guess: bool, fallbacks: tuple[str, ...], flag: str,
                 path: str) -> str:
    if configured in columns:
        return configured
    # finetrainers defaults (prompts.txt/videos.txt) name files, not columns: then guess the column.
    if guess:
        for name in fallbacks:
            if name in columns:
                return name
    raise DatasetError(
        f"{path}: no column '{configured}' for {flag}; its columns are {columns}. "
        f"Pass {flag} with the right column name"
    )


def _read_metadata(source: Source) -> tuple[list[Record], list[Skip]]:
    path = source.metadata_path
    rows = _parse_metadata(path)
    if not rows:
        raise DatasetError(f"{path}: holds no rows")
    if not all(isinstance(row, dict) for row in rows):
        raise DatasetError(f"{path}: every entry must be an object with caption and path fields")
    columns = list(dict.fromkeys(key for row in rows for key in row))
    name = posixpath.basename(path)
    caption_guess, media_guess = source.guess_columns
    media_col = _pick_column(columns, source.media_name, media_guess, PATH_COLUMNS, "--video_column", path)
    caption_col = _pick_column(columns, source.caption_name, caption_guess, CAPTION_COLUMNS, "--caption_column", path)
    records, skips = [], []
    for number, row in enumerate(rows, start=1):
        media, caption = row.get(media_col), row.get(caption_col)
        record, skip = _make_record(source, str(media or ""), "" if caption is None else str(caption),
                                    f"{name} row {number}")
        records.append(record) if record else skips.append(skip)
    return records, skips


def _read_folder(source: Source) -> tuple[list[Record], list[Skip]]:
    root = source.root
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
        record, skip = _make_record(source, rel, caption, f"{rel} (+ .txt caption)")
        records.append(record) if record else skips.append(skip)
    if not records and not skips:
        if any(path.lower().endswith((".tar", ".parquet")) for path in files):
            raise DatasetError(f"{root}: holds .tar/.parquet files (a webdataset or parquet dataset), which ray-ltx "
                               f"does not read; export the clips with a caption file each, or a metadata CSV/JSONL "
                               f"(see {DOCS})")
        raise DatasetError(
            f"{root}: found no prompts.txt/videos.txt, no metadata file and no clips with .txt captions; "
            f"see {DOCS} for the supported layouts"
        )
    return records, skips
