"""Paths that may be local or remote: one pyarrow filesystem view over both.

Datasets, caches, checkpoints and outputs may live on a local disk, a shared mount, or an
object store (``s3://``, ``gs://``, ``hdfs://``, or any fsspec protocol). Every read and write
of ray-ltx goes through here, and every write is atomic: a temporary name, then a rename, so a
reader never takes a half-written file for a complete one. On local (and mounted) filesystems a
write is also durable: the file is fsynced before the rename and its directory after, so a power
loss or kernel crash leaves the old file or the new one, not an empty or truncated one.

Recursive deletes refuse the filesystem root, the root of a bucket, and any directory that holds
the home or the current directory: a mistyped path must never take them with it.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path, PurePosixPath

import pyarrow.fs as pafs

from ray_ltx.errors import OutputDirError
from ray_ltx.redaction import redact

COPY_CHUNK = 16 << 20


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
    """Write atomically (the file appears complete or not at all) and, on local filesystems, durably."""
    fs, inner = filesystem(path)
    fs.create_dir(str(PurePosixPath(inner).parent), recursive=True)
    tmp = _temp_sibling(inner)
    try:
        if _is_local(fs):
            with open(tmp, "wb") as handle:
                handle.write(data)
                _sync(handle)
            os.replace(tmp, inner)
            fsync_dir(os.path.dirname(inner))
        else:
            with fs.open_output_stream(tmp) as stream:
                stream.write(data)
            fs.move(tmp, inner)
    except BaseException:
        _delete_quietly(fs, tmp)
        raise


def _is_local(fs: pafs.FileSystem) -> bool:
    return isinstance(fs, pafs.LocalFileSystem)


def _sync(handle) -> None:
    handle.flush()
    os.fsync(handle.fileno())


def fsync_dir(path: str) -> None:
    """Make the entries of a local directory (a rename into it, a new file) durable."""
    descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_text(path: str, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def _delete_quietly(fs: pafs.FileSystem, inner: str) -> None:
    try:
        fs.delete_file(inner)
    except (OSError, FileNotFoundError):
        pass


def delete_dir(path: str) -> None:
    """Delete a directory tree (nothing if it does not exist); refuses the places listed in the module doc."""
    check_deletable(path)
    fs, inner = filesystem(path)
    if fs.get_file_info(inner).type == pafs.FileType.Directory:
        fs.delete_dir(inner)


def check_deletable(path: str) -> None:
    """Raise OutputDirError if ``path`` is one of the places a recursive delete must never touch."""
    path = str(path)
    if is_uri(path):
        problem = "it is the root of a bucket" if "/" not in path.partition("://")[2].strip("/") else None
    else:
        problem = _unsafe_local(Path(absolute(path)))
    if problem:
        raise OutputDirError(f"refusing to delete {redact(path)}: {problem}. Nothing was deleted; give the "
                             "run (--output_dir, --cache_dir, --storage_path, --out) a directory of its own")


def _unsafe_local(target: Path) -> str | None:
    if target == Path(target.anchor):
        return "it is the filesystem root"
    for name, protected in (("your home directory", Path.home()), ("the current directory", Path.cwd())):
        protected = protected.resolve()
        if target == protected or target in protected.parents:
            return f"it is or holds {name} ({protected})"
    return None


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


def replace_dir(source: str, dest: str) -> None:
    """Copy the directory ``source`` to ``dest`` (any filesystems), replacing what was there.

    The copy goes to a temporary sibling first (each local file fsynced) and is renamed into place,
    so ``dest`` holds either the old or the new content, never a mix or a half-copied tree.
    """
    fs, inner = filesystem(dest)
    parent = str(PurePosixPath(inner).parent)
    fs.create_dir(parent, recursive=True)
    tmp = _temp_sibling(inner)
    base = source.rstrip("/")
    try:
        for path in list_files(source):
            _copy_file(path, fs, f"{tmp}/{path[len(base) + 1 :]}")
        if _is_local(fs):
            for directory, _, _ in os.walk(tmp):
                fsync_dir(directory)
        if fs.get_file_info(inner).type == pafs.FileType.Directory:
            old = _temp_sibling(inner)
            fs.move(inner, old)
            fs.move(tmp, inner)
            fs.delete_dir(old)
        else:
            fs.move(tmp, inner)
        if _is_local(fs):
            fsync_dir(parent)
    except BaseException:
        if fs.get_file_info(tmp).type == pafs.FileType.Directory:
            fs.delete_dir(tmp)
        raise


def _copy_file(source: str, dest_fs: pafs.FileSystem, dest: str) -> None:
    """Stream one file (it may be gigabytes of weights) to ``dest``; local copies are fsynced."""
    source_fs, source_inner = filesystem(source)
    dest_fs.create_dir(str(PurePosixPath(dest).parent), recursive=True)
    with source_fs.open_input_stream(source_inner) as reader:
        if _is_local(dest_fs):
            with open(dest, "wb") as handle:
                while chunk := reader.read(COPY_CHUNK):
                    handle.write(chunk)
                _sync(handle)
        else:
            with dest_fs.open_output_stream(dest) as writer:
                while chunk := reader.read(COPY_CHUNK):
                    writer.write(chunk)


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

