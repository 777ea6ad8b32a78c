"""Paths that may be local or remote: one pyarrow filesystem view over both.

Datasets, caches, checkpoints and outputs may live on a local disk, a shared mount, or an
object store (``s3://``, ``gs://``, ``hdfs://``, or any fsspec protocol). Every read and write
of ray-ltx goes through here, and every write is atomic: a temporary name, then a rename, so a
reader never takes a half-written file for a complete one.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path, PurePosixPath

import pyarrow.fs as pafs


def is_uri(path: str) -> bool:
    return "://" in str(path)


def filesystem(path: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem holding ``path`` and the path inside it."""
    path = str(path)
    if not is_uri(path):
        return pafs.LocalFileSystem(), str(Path(path).expanduser().resolve())
    try:
        return pafs.FileSystem.from_uri(path)
    except ValueError as arrow_error:  # pyarrow.ArrowInvalid, not a pyarrow scheme: try fsspec
        try:
            import fsspec
        except ImportError:
            raise arrow_error from None
        protocol, _, rest = path.partition("://")
        return pafs.PyFileSystem(pafs.FSSpecHandler(fsspec.filesystem(protocol))), rest


def join(base: str, *parts: str) -> str:
    if is_uri(base):
        return "/".join([str(base).rstrip("/"), *parts])
    return str(Path(base).joinpath(*parts))


def absolute(path: str) -> str:
    """Local paths made absolute (so they mean the same on every process); URIs unchanged."""
    return path if is_uri(path) else str(Path(path).expanduser().resolve())


def exists(path: str) -> bool:
    fs, inner = filesystem(path)
    return fs.get_file_info(inner).type != pafs.FileType.NotFound


def is_dir(path: str) -> bool:
    fs, inner = filesystem(path)
    return fs.get_file_info(inner).type == pafs.FileType.Directory


def is_file(path: str) -> bool:
    fs, inner = filesystem(path)
    return fs.get_file_info(inner).type == pafs.FileType.File


def read_bytes(path: str) -> bytes:
    fs, inner = filesystem(path)
    with fs.open_input_stream(inner) as stream:
        return stream.read()


def read_text(path: str) -> str:
    return read_bytes(path).decode("utf-8")


def _temp_sibling(inner: str) -> str:
    parent, name = PurePosixPath(inner).parent, PurePosixPath(inner).name
    return str(parent / f".tmp-{uuid.uuid4().hex[:8]}-{name}")


def write_bytes(path: str, data: bytes) -> None:
    """Write atomically: the file appears complete or not at all."""
    fs, inner = filesystem(path)
    fs.create_dir(str(PurePosixPath(inner).parent), recursive=True)
    tmp = _temp_sibling(inner)
    try:
        with fs.open_output_stream(tmp) as stream:
            stream.write(data)
        if isinstance(fs, pafs.LocalFileSystem):
            os.replace(tmp, inner)
        else:
            fs.move(tmp, inner)
    except BaseException:
        _delete_quietly(fs, tmp)
        raise


def write_text(path: str, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def _delete_quietly(fs: pafs.FileSystem, inner: str) -> None:
    try:
        fs.delete_file(inner)
    except (OSError, FileNotFoundError):
        pass


def delete_dir(path: str) -> None:
    fs, inner = filesystem(path)
    if fs.get_file_info(inner).type == pafs.FileType.Directory:
        fs.delete_dir(inner)


def list_files(path: str, recursive: bool = True) -> list[str]:
    """Files (not directories) below ``path``, as paths in the same form as ``path``, sorted."""
    fs, inner = filesystem(path)
    if fs.get_file_info(inner).type != pafs.FileType.Directory:
        return []
    infos = fs.get_file_info(pafs.FileSelector(inner, recursive=recursive))
    base = inner.rstrip("/")
    files = []
    for info in infos:
        if info.type != pafs.FileType.File:
            continue
        files.append(join(path, info.path[len(base) + 1 :]))
    return sorted(files)


def upload_dir(local_dir: str | Path, dest: str) -> None:
    """Copy a local directory to ``dest`` (local or remote), replacing what was there.

    The copy goes to a temporary sibling first and is renamed into place, so ``dest`` holds
    either the old or the new content, never a mix.
    """
    fs, inner = filesystem(dest)
    parent = str(PurePosixPath(inner).parent)
    fs.create_dir(parent, recursive=True)
    tmp = _temp_sibling(inner)
    pafs.copy_files(str(Path(local_dir).resolve()), tmp, source_filesystem=pafs.LocalFileSystem(),
                    destination_filesystem=fs)
    if fs.get_file_info(inner).type == pafs.FileType.Directory:
        old = _temp_sibling(inner)
        fs.move(inner, old)
        fs.move(tmp, inner)
        fs.delete_dir(old)
    else:
        fs.move(tmp, inner)


def delete_file(path: str) -> None:
    fs, inner = filesystem(path)
    _delete_quietly(fs, inner)


def list_dirs(path: str) -> list[str]:
    """Names of the directories directly inside ``path``, sorted."""
    fs, inner = filesystem(path)
    if fs.get_file_info(inner).type != pafs.FileType.Directory:
        return []
    infos = fs.get_file_info(pafs.FileSelector(inner, recursive=False))
    return sorted(info.base_name for info in infos if info.type == pafs.FileType.Directory)


def copy_dir(source: str, dest: str) -> None:
    """Copy every file below ``source`` into ``dest`` (any filesystems), each file written atomically."""
    for path in list_files(source):
        relative = path[len(source.rstrip("/")) + 1 :]
        write_bytes(join(dest, relative), read_bytes(path))
