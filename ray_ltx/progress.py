"""Progress of long work (preprocessing, training, validation, generation) with a rate and an ETA.

On a terminal a live bar (tqdm; in Ray workers ``ray.experimental.tqdm_ray``, which draws on the driver's
terminal); in non-interactive logs (``ray job submit``, ``kubectl logs``, files) one line every
``every_s`` seconds and at the end, so a log tells how far a run is without carriage-return noise.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def interactive() -> bool:
    return sys.stderr.isatty()


class Progress:
    """``total`` units of work; :meth:`update` after each; rate and ETA from the time since the Progress was made
    (create it right before the work, after loading models)."""

    def __init__(self, total: int, what: str, unit: str = "it", logger: logging.Logger | None = None,
                 every_s: float = 10.0, bar: bool | None = None, remote: bool = False, start: int = 0):
        self.total, self.what, self.unit = total, what, unit
        self.log = logger or logging.getLogger("ray_ltx")
        self.every_s = every_s
        self.done = start
        self.started = time.monotonic()
        self.first: tuple[float, int] = (self.started, start)
        self.last_line = 0.0
        self._bar = None
        if bar if bar is not None else interactive():
            self._bar = _make_bar(total, what, unit, remote, start)

    def eta_s(self) -> float | None:
        if self.done <= self.first[1]:
            return None
        rate = (self.done - self.first[1]) / (time.monotonic() - self.first[0])
        return (self.total - self.done) / rate if rate > 0 else None

    def update(self, done: int | None = None, force: bool = False, **fields: Any) -> None:
        self.done = self.done + 1 if done is None else done
        now = time.monotonic()
        text = ", ".join(f"{k} {_show(v)}" for k, v in fields.items() if v is not None)
        if self._bar is not None:
            self._bar.n = self.done
            if hasattr(self._bar, "set_postfix_str"):
                self._bar.set_postfix_str(text, refresh=False)
            else:  # ray's tqdm_ray draws the description only
                self._bar.set_description(f"{self.what} {text}")
            self._bar.refresh()
            return
        finished = self.done >= self.total
        if force or finished or now - self.last_line >= self.every_s:
            self.last_line = now
            eta = self.eta_s()
            percent = 100.0 * self.done / self.total if self.total else 100.0
            parts = [f"{self.what} {self.done}/{self.total} {self.unit} ({percent:.0f}%)"]
            if text:
                parts.append(text)
            parts.append(f"elapsed {format_duration(now - self.started)}")
            if eta is not None and not finished:
                parts.append(f"ETA {format_duration(eta)}")
            self.log.info(", ".join(parts))

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e-2 or abs(value) >= 1e4 else f"{value:.4g}"
    return str(value)


def _make_bar(total: int, what: str, unit: str, remote: bool, start: int):
    if remote:
        from ray.experimental.tqdm_ray import tqdm
    else:
        from tqdm import tqdm
    return tqdm(total=total, desc=what, unit=unit, initial=start)
