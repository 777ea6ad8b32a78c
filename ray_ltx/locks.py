"""One run at a time per output_dir and per cache_dir: an exclusive lock file naming its holder.

Two trainings in one output_dir would interleave checkpoints (and ``--overwrite_output_dir`` would
delete the other's); two preprocessings of one cache would delete or duplicate each other's shards.
``train`` holds ``<output_dir>/.ray-ltx-output.lock`` for the whole run and ``preprocess`` (also when
train runs it) ``<cache_dir>/.ray-ltx-cache.lock``. The file holds the holder's host, pid, process
start time, when it took the lock and its command line.

On a local or shared (NFS) filesystem the lock is taken atomically: the file is written under a
temporary name and hard-linked to the lock name, which fails if the lock exists. A holder refreshes
the file's modification time every ``HEARTBEAT_S`` seconds. A lock whose holder is gone is taken over:
on this host when its pid no longer runs (or now belongs to another process), from another host when
its heartbeat is older than ``STALE_S`` seconds (a driver pod that died with its node). Otherwise the
run stops with an error naming the holder.

Object stores (``s3://``, ``gs://``) have no atomic create-if-absent through pyarrow, so there the lock
is best effort: written when absent, then read back to check that it is ours; two runs starting in
the same second may both proceed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass

from ray_ltx import storage
from ray_ltx.errors import UserError
from ray_ltx.redaction import redact

log = logging.getLogger(__name__)

HEARTBEAT_S = 15.0
STALE_S = 90.0


@dataclass(frozen=True)
class Holder:
    host: str
    pid: int
    pid_start: str  # the process's start time (Linux), so a reused pid is not taken for the holder
    started: float
    command: str
    token: str

    @classmethod
    def me(cls) -> Holder:
        pid = os.getpid()
        return cls(socket.gethostname(), pid, _process_start(pid), time.time(), " ".join(sys.argv)[:500],
                   uuid.uuid4().hex)

    def describe(self) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        return f"pid {self.pid} on {self.host} since {since} ({redact(self.command)})"

    def gone(self, heartbeat_age: float) -> bool:
        """Whether the holder no longer runs (certain on this host, by heartbeat elsewhere)."""
        if self.host != socket.gethostname():
            return heartbeat_age > STALE_S
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # another user's process: alive
            pass
        return bool(self.pid_start) and _process_start(self.pid) != self.pid_start


def _process_start(pid: int) -> str:
    """Start time of a process in clock ticks since boot (field 22 of /proc/<pid>/stat); '' off Linux."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            return handle.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


class Lock:
    """A held lock; :meth:`release` (or leaving :func:`exclusive`) gives it back."""

    def __init__(self, path: str, holder: Holder):
        self.path, self.holder = path, holder
        self._stop = threading.Event()
        self._heartbeat = threading.Thread(target=self._beat, name="ray-ltx-lock-heartbeat", daemon=True)
        self._heartbeat.start()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                if _read(self.path) != self.holder:
                    raise FileNotFoundError(self.path)
                if storage.is_uri(self.path):
                    _write(self.path, self.holder)
                else:
                    os.utime(self.path)
            except FileNotFoundError:
                log.error("lost the lock %s: another run took it over or it was deleted", redact(self.path))
                return
            except OSError as error:  # a storage hiccup: the next beat tries again
                log.warning("could not refresh the lock %s (%s)", redact(self.path), error)

    def release(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError, ValueError):
            if _read(self.path) == self.holder:
                storage.delete_file(self.path)


@contextlib.contextmanager
def exclusive(directory: str, role: str, error: type[UserError]) -> Iterator[Lock]:
    """Hold ``<directory>/.ray-ltx-<role>.lock`` for the block; ``error`` names a live holder."""
    lock = acquire(directory, role, error)
    try:
        yield lock
    finally:
        lock.release()


def acquire(directory: str, role: str, error: type[UserError]) -> Lock:
    path = storage.join(directory, f".ray-ltx-{role}.lock")
    me = Holder.me()
    for _ in range(5):  # the lock changed hands while we looked: look again
        if _create(path, me):
            return Lock(path, me)
        try:
            holder, age = _read(path), _age(path)
        except FileNotFoundError:
            continue
        if holder is None:
            if age < 5.0:  # being written (filesystems without hard links)
                time.sleep(1.0)
                continue
            raise error(f"{redact(path)} is not a lock file ray-ltx wrote; delete it if no run uses "
                        f"{redact(directory)}")
        if not holder.gone(age):
            raise error(
                f"{redact(directory)} is in use by another ray-ltx run: {holder.describe()}, last heartbeat "
                f"{age:.0f} s ago. Wait for it to finish or stop it, or use another directory. If that run is "
                f"gone, its lock expires {STALE_S:.0f} s after its last heartbeat, or delete {redact(path)}")
        log.warning("taking over the lock %s: its holder, %s, is gone", redact(path), holder.describe())
        _remove_if_held_by(path, holder)
    raise error(f"could not take the lock {redact(path)}: other runs keep taking it; retry")


def _create(path: str, holder: Holder) -> bool:
    """Create the lock file holding ``holder`` unless it exists; True if we did."""
    if storage.is_uri(path):
        if storage.exists(path):
            return False
        _write(path, holder)
        return _read(path) == holder
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    temp = f"{path}.{holder.token}"
    _write_local(temp, holder, os.O_CREAT | os.O_TRUNC)
    try:
        os.link(temp, path)  # atomic, and fails when the lock exists (NFS included)
    except FileExistsError:
        return False
    except OSError:  # no hard links here (some FUSE mounts): an exclusive create, written after
        try:
            _write_local(path, holder, os.O_CREAT | os.O_EXCL)
        except FileExistsError:
            return False
    finally:
        os.unlink(temp)
    storage.fsync_dir(directory)
    return True


def _write_local(path: str, holder: Holder, flags: int) -> None:
    descriptor = os.open(path, flags | os.O_WRONLY, 0o644)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        json.dump(asdict(holder), handle)
        handle.flush()
        os.fsync(handle.fileno())


def _remove_if_held_by(path: str, holder: Holder) -> None:
    """Remove a stale lock, unless another process replaced it meanwhile (then it is theirs)."""
    if storage.is_uri(path):
        if _read(path) == holder:
            storage.delete_file(path)
        return
    aside = f"{path}.stale-{uuid.uuid4().hex}"
    try:
        os.rename(path, aside)  # atomic: we now own whatever lock was there
    except FileNotFoundError:
        return
    if _read(aside) != holder:  # a fresh lock another process took over first: put it back
        with contextlib.suppress(FileExistsError):
            os.link(aside, path)
    os.unlink(aside)


def _write(path: str, holder: Holder) -> None:
    storage.write_text(path, json.dumps(asdict(holder)))


def _read(path: str) -> Holder | None:
    """The holder named in a lock file (None when the file is not a lock of ours)."""
    try:
        return Holder(**json.loads(storage.read_text(path)))
    except (ValueError, TypeError):
        return None


def _age(path: str) -> float:
    """Seconds since the lock file was last written or refreshed."""
    if storage.is_uri(path):
        fs, inner = storage.filesystem(path)
        mtime = fs.get_file_info(inner).mtime
        return time.time() - mtime.timestamp() if mtime else 0.0
    return time.time() - os.stat(path).st_mtime
