"""Elastic training's record of the worker group's sizes: which restarts and resizes a run went through.

Ray Train resizes an elastic run (``--num_workers MIN:MAX``) by restarting the whole worker group at the
new size from the latest checkpoint: when a worker or its node is lost (smaller), or when more workers fit
(larger). Rank 0 of each worker group tells a small actor on the driver's node (the journal) its size when
it starts and each step it finishes. The journal turns that into one event per restart: when, from how
many workers to how many, the step the old group had reached, the checkpoint step the new one resumed
from, the steps lost (trained again) and the seconds lost (from the old group's last step until the new
group is back at that step, or until the next restart: the restart, the model load and the replay). The
driver reads the events at the end of the run for the tracking run (MLflow or W&B: a table and one tag per
resize) and the summary.
"""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

RESIZES_ARTIFACT = "elastic/resizes.json"


class Journal:
    """The worker groups of one run, in order (a Ray actor: :func:`start_journal`)."""

    def __init__(self, clock: Callable[[], float] = time.time):
        self._clock = clock
        self._sizes: list[int] = []
        self._last: tuple[int, float] | None = None  # (step, time) the current group last reached
        self._events: list[dict[str, Any]] = []
        self._pending: list[tuple[dict[str, Any], float]] = []  # events whose group has not caught up yet

    def begin(self, world_size: int, step: int) -> int:
        """A worker group of ``world_size`` starts at ``step``; returns its number (its step reports carry it)."""
        now = self._clock()
        for event, reached_at in self._pending:  # a group lost before it caught up: its loss ends here
            event["seconds_lost"] = round(now - reached_at, 2)
        self._pending.clear()
        if self._last is not None:
            reached, reached_at = self._last
            event = {"time": datetime.datetime.fromtimestamp(now).isoformat(timespec="seconds"),
                     "from_workers": self._sizes[-1], "to_workers": world_size, "from_step": reached,
                     "resumed_step": step, "steps_lost": max(0, reached - step), "seconds_lost": None}
            self._events.append(event)
            self._pending.append((event, reached_at))
        self._sizes.append(world_size)
        self._last = (step, now)
        self._catch_up(step, now)
        return len(self._sizes) - 1

    def step(self, group: int, step: int) -> None:
        """The worker group ``group`` finished ``step`` (reports of a group already replaced are ignored)."""
        if group != len(self._sizes) - 1:
            return
        now = self._clock()
        self._last = (step, now)
        self._catch_up(step, now)

    def _catch_up(self, step: int, now: float) -> None:
        waiting = []
        for event, reached_at in self._pending:
            if step >= event["from_step"]:
                event["seconds_lost"] = round(now - reached_at, 2)
            else:
                waiting.append((event, reached_at))
        self._pending = waiting

    def record(self) -> dict[str, Any]:
        """{"sizes": the size of each worker group in order, "restarts": one event per restart}."""
        return {"sizes": list(self._sizes), "restarts": [dict(event) for event in self._events]}


def start_journal():
    """The run's journal, as an actor on this (the driver's) node: a lost worker node must not take it along."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    return ray.remote(num_cpus=0)(Journal).options(scheduling_strategy=here).remote()


def end_journal(journal: Any, read: bool = False) -> dict[str, Any]:
    """End the journal actor; with ``read``, first fetch what it recorded ({} otherwise)."""
    import ray

    record: dict[str, Any] = {}
    try:
        if read:
            record = ray.get(journal.record.remote(), timeout=60)
        ray.kill(journal)
    except Exception as error:  # noqa: BLE001 - bookkeeping: the run's weights do not depend on it
        log.warning("the worker-group journal could not be read (%s): resizes are not reported", error)
    return record


class GroupLog:
    """Rank 0's side of the journal: the group's start and each finished step (nothing on other ranks)."""

    def __init__(self, journal: Any, rank: int, world_size: int, step: int):
        import ray

        self._journal = journal if rank == 0 else None
        self._group = 0
        if self._journal is not None:
            try:
                self._group = ray.get(journal.begin.remote(world_size, step), timeout=60)
            except Exception as error:  # noqa: BLE001 - bookkeeping must not stop training
                log.warning("the worker-group journal does not answer (%s): this group's resizes go unrecorded", error)
                self._journal = None

    def step(self, step: int) -> None:
        if self._journal is not None:
            self._journal.step.remote(self._group, step)  # not waited for: one small message per step


def resizes(record: dict[str, Any]) -> list[dict[str, Any]]:
    return [event for event in record.get("restarts", []) if event["from_workers"] != event["to_workers"]]


def seconds_lost(record: dict[str, Any]) -> float:
    return round(sum(event["seconds_lost"] or 0.0 for event in record.get("restarts", [])), 1)


def describe(record: dict[str, Any]) -> str | None:
    """One line for the run's summary, or None for a run that never restarted."""
    restarts = record.get("restarts", [])
    if not restarts:
        return None
    sizes = " -> ".join(str(size) for size in record["sizes"])
    changed = len(resizes(record))
    steps = sum(event["steps_lost"] for event in restarts)
    return (f"{sizes} ({changed} resize{'s' * (changed != 1)}, {len(restarts)} restart{'s' * (len(restarts) != 1)}); "
            f"{steps} step{'s' * (steps != 1)} and {seconds_lost(record):.0f} s lost to them")


def log_to_tracker(tracker: Any, record: dict[str, Any]) -> None:
    """The restarts as a table artifact and one ``resize.<n>`` tag per restart (``tracker``: a
    :class:`~ray_ltx.tracking.Tracker`)."""
    restarts = record.get("restarts", [])
    if not restarts:
        return
    tracker.log_table(restarts, RESIZES_ARTIFACT)
    tags = {}
    for number, event in enumerate(restarts, 1):
        lost = "?" if event["seconds_lost"] is None else f"{event['seconds_lost']:.1f}"
        tags[f"resize.{number}"] = (f"{event['time']} at step {event['from_step']}: {event['from_workers']} -> "
                                    f"{event['to_workers']} workers, resumed from step {event['resumed_step']}, "
                                    f"{event['steps_lost']} steps and {lost} s lost")
    tracker.set_tags(tags)
