"""What a sweep leaves: the trial table, ``best_config.yaml``, and its runs in the tracker (MLflow or W&B).

The table comes from Tune's ResultGrid: each trial's Result gives its values, last metrics, error and
whether it is done; the ``trial_result.json`` its training wrote tells a trial that trained to the end
from one the scheduler stopped. All tracking bookkeeping (the sweep's parent run, the trials' runs
nested under it) is in :class:`SweepRuns` at the end of this module, through the tracker interface.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from ray.exceptions import RayTaskError
from ray.train import WorkerGroupError
from ray.tune import Result, ResultGrid

from ray_ltx import storage, tracking
from ray_ltx.config import Config
from ray_ltx.errors import TrackingError
from ray_ltx.redaction import MASK, redact, redact_value, redacted_config
from ray_ltx.tune.spec import Dimension, SweepSpec, apply_params, plain, tied_values
from ray_ltx.tune.trial import read_trial_result, trial_dir

BEST_CONFIG = "best_config.yaml"
DONE = ("FINISHED", "EARLY_STOPPED", "FAILED")  # the other status, PENDING: --resume runs the trial


@dataclass
class SweepResult:
    name: str
    metric: str
    mode: str
    experiment_path: str
    trials: list[dict[str, Any]]
    best_trial_id: str | None
    best_metric: float | None
    best_params: dict[str, Any]
    best_config_path: str | None
    parent_run_id: str | None
    tracking_uri: str | None
    seconds: float = 0.0
    tracking: str | None = None  # where the sweep's run is recorded, in words


# -- the trial table ----------------------------------------------------------------------------------


def param_columns(spec: SweepSpec) -> list[str]:
    return [d.field for d in spec.dimensions if d.kind != "constant"]


def trial_rows(grid: ResultGrid, spec: SweepSpec, base: dict[str, Any], output_dir: str) -> list[dict[str, Any]]:
    """One row per trial: trial_id, status, the values, the metric, step, time_s, error, output_dir, mlflow_run_id."""
    return sorted((_row(result, spec, base, output_dir) for result in grid), key=lambda row: row["trial_id"])


def _row(result: Result, spec: SweepSpec, base: dict[str, Any], output_dir: str) -> dict[str, Any]:
    metrics = result.metrics or {}
    trial_id = metrics["trial_id"]
    params: dict[str, Any] = {}
    if result.config is not None:  # None for a trial that never started
        params = {d.field: plain(result.config.get(d.field)) for d in spec.searched}
        params.update(tied_values(params, spec.ties, base))
    finished = read_trial_result(output_dir, trial_id)
    if result.error is not None:
        status = "FAILED"
    elif finished is not None:
        status = "FINISHED"
    elif metrics.get("done"):  # Tune marks the last result done when the scheduler stops the trial
        status = "EARLY_STOPPED"
    else:  # the sweep was stopped before this trial ended
        status = "PENDING"
    value, steps, seconds = metrics.get(spec.metric), metrics.get("step"), metrics.get("time_total_s")
    return {
        "trial_id": trial_id, "status": status,
        **{name: params.get(name) for name in param_columns(spec)},
        spec.metric: float(value) if value is not None else None,
        "step": int(steps) if steps is not None else None,
        "time_s": round(float(seconds), 1) if seconds is not None else None,
        "error": error_text(result.error) if result.error is not None else None,
        "output_dir": trial_dir(output_dir, trial_id),
        "mlflow_run_id": finished.get("mlflow_run_id") if finished else None,
    }


def error_text(error: BaseException) -> str:
    """A failed trial's own error on one line. Ray wraps it: Tune's error is a RayTaskError whose text is the
    remote traceback, around the trainable's exception, which for a failed TorchTrainer holds the workers'."""
    if isinstance(error, RayTaskError):
        error = error.cause
    if isinstance(error, WorkerGroupError) and error.worker_failures:
        error = next(iter(error.worker_failures.values()))
    message = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
    return redact(f"{type(error).__name__}: {message}")[:500]


def pick_best(rows: list[dict[str, Any]], spec: SweepSpec) -> dict[str, Any] | None:
    """The best trial that trained to the end, else the best early-stopped one.

    Not ``ResultGrid.get_best_result``: it ranks every trial by its last value, and an early-stopped
    trial's last value comes from fewer steps than the others'.
    """
    def usable(row: dict[str, Any], status: str) -> bool:
        value = row[spec.metric]
        return row["status"] == status and value is not None and math.isfinite(value)

    candidates = [r for r in rows if usable(r, "FINISHED")] or [r for r in rows if usable(r, "EARLY_STOPPED")]
    if not candidates:
        return None
    pick = min if spec.mode == "min" else max
    return pick(candidates, key=lambda r: r[spec.metric])


# -- the best config ----------------------------------------------------------------------------------


def best_config(base: dict[str, Any], params: dict[str, Any], ties: list[Dimension], sweep_name: str) -> Config:
    """The winner as a ready-to-train config: the base with the best values, its own output_dir."""
    data = apply_params(base, params, ties)
    data["output_dir"] = storage.join(base["output_dir"], "best")
    data["training"]["resume_from_checkpoint"] = None
    data["tracking"]["mlflow_run_name"] = f"{sweep_name}-best"
    return Config.from_dict(data, f"the best config of sweep {sweep_name}")


def write_best_config(best: dict[str, Any], spec: SweepSpec, base: dict[str, Any], output_dir: str) -> str:
    """``<output_dir>/best_config.yaml``, with credentials masked like every file ray-ltx writes."""
    chosen = best_config(base, {d.field: best[d.field] for d in spec.searched}, spec.ties, spec.name)
    path = storage.join(output_dir, BEST_CONFIG)
    text = yaml.safe_dump(redacted_config(chosen), sort_keys=False)
    values = {name: best[name] for name in param_columns(spec)}
    header = (f"# ray-ltx: best config of sweep '{spec.name}' ({spec.metric} {spec.mode}): trial "
              f"{best['trial_id']}, {spec.metric} = {best[spec.metric]:.6g}\n"
              f"# values: {redact(json.dumps(values))}\n"
              f"# train it: ray-ltx train --config {redact(path)}\n")
    if MASK in text:
        header += f"# credentials are masked ({MASK}): give them again (flags or environment) to train\n"
    storage.write_text(path, header + text)
    return path


# -- printing ------------------------------------------------------------------------------------------


def _show(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e-3 or abs(value) >= 1e4 else f"{value:.4f}".rstrip("0").rstrip(".")
    if isinstance(value, list):
        return " ".join(str(v) for v in value)
    return str(value)


def format_table(rows: list[dict[str, Any]], spec: SweepSpec, best_id: str | None = None) -> str:
    columns = ["trial_id", "status", *param_columns(spec), spec.metric, "step", "time_s"]
    table = [[("* " if r["trial_id"] == best_id else "  ") + _show(r["trial_id"]),
              *[_show(r.get(c)) for c in columns[1:]]] for r in rows]
    header = ["  trial", "status", *param_columns(spec), spec.metric, "step", "time (s)"]
    widths = [max(len(h), *(len(row[i]) for row in table)) if table else len(h) for i, h in enumerate(header)]
    lines = ["", f"Sweep {spec.name!r}: {len(rows)} trial(s), {spec.metric} ({spec.mode})",
             "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in table]
    failed = [r for r in rows if r["status"] == "FAILED"]
    if failed:
        lines.append("failed trials:")
        lines += [f"  {r['trial_id']}: {r['error']}" for r in failed]
    return "\n".join(lines)


def format_footer(result: SweepResult) -> str:
    lines = []
    if result.best_trial_id:
        lines.append(f"best: trial {result.best_trial_id}, {result.metric} = {result.best_metric:.6g}, "
                     f"{json.dumps(result.best_params)}")
        path = redact(result.best_config_path or "")
        lines.append(f"  best config: {path} (ray-ltx train --config {path})")
    if result.parent_run_id:
        lines.append(f"  sweep run: {result.tracking} (nested runs: one per trial)")
    lines.append(f"  Tune state: {redact(result.experiment_path)} ({result.seconds:.0f} s)")
    return "\n".join(lines)


# -- tracking: the sweep's parent run and the trials' runs under it -------------------------------------


class SweepRuns:
    """The sweep's parent run. Each trial's training opens its own run nested under it (named
    ``trial-<trial_id>``); the sweep tags those with their Tune outcome and ends the ones Tune cut short."""

    def __init__(self, tracker: tracking.Tracker):
        self.tracker = tracker
        self.run_id = tracker.run_id

    @classmethod
    def start(cls, config: Config, spec: SweepSpec) -> SweepRuns:
        space = {d.field: d.describe() for d in spec.dimensions}
        return cls(tracking.start(config, run_name=spec.name, extra_params={
            "sweep.name": spec.name, "sweep.metric": spec.metric, "sweep.mode": spec.mode,
            "sweep.num_samples": spec.num_samples, "sweep.search_alg": spec.search_alg.type,
            "sweep.scheduler": spec.scheduler.type, "sweep.space": redact(json.dumps(space)),
        }, tags={"ray_ltx.kind": "sweep", "ray_ltx.sweep": spec.name}))

    @classmethod
    def reopen(cls, config: Config, run_id: str) -> SweepRuns:
        """The parent run of a sweep continued by --resume, running again."""
        tracker = tracking.resume(config, run_id)
        if tracker is None:
            raise TrackingError(f"--resume: the sweep's run {run_id} is gone from the tracker; start the sweep anew "
                                "in another --output_dir, or resume it against the tracker that holds the run")
        runs = cls(tracker)
        # Trials the stopped driver left running end now; --resume restarts them, each continuing its own run.
        for child in runs.tracker.children():
            if child.status == "RUNNING":
                runs._end_killed(child, error="the sweep's driver stopped; trial restarted by --resume")
        return runs

    def _end_killed(self, run: tracking.RunInfo, *, error: str | None = None, stopped_early: str | None = None) -> None:
        """End a trial's run KILLED, with why: ``error`` (the sweep stopped) or ``stopped_early`` (the scheduler)."""
        trial = self.tracker.child(run.run_id)
        if not error and "error" in run.tags:  # an error the trial recorded for a stop that was no failure
            trial.delete_tag("error")
        if stopped_early:
            trial.set_tags({"stopped_early": stopped_early})
        trial.end("KILLED", error=error)

    def fail(self, error: BaseException) -> None:
        self.tracker.end("FAILED", error=f"{type(error).__name__}: {error}")

    def interrupted(self) -> None:
        self.tracker.end("KILLED", error="sweep interrupted; continue with --resume")

    def close_trials(self, rows: list[dict[str, Any]]) -> None:
        """Tag each trial's run with its Tune outcome; end the runs of trials Tune stopped (they could not).

        Sets ``mlflow_run_id`` in the rows of trials whose training did not return it.
        """
        by_name: dict[str, list[tracking.RunInfo]] = {}
        for child in self.tracker.children():
            by_name.setdefault(child.name, []).append(child)
        for row in rows:
            runs = sorted(by_name.get(f"trial-{row['trial_id']}", []), key=lambda r: r.start_time)
            if not runs:
                continue
            if row["status"] not in DONE:
                # the sweep was stopped under this trial (its run may have recorded the actor's death as a failure)
                for run in runs:
                    if run.status in ("RUNNING", "FAILED"):
                        self._end_killed(run, error="the sweep was stopped; --resume restarts this trial")
                continue
            latest = runs[-1]
            row["mlflow_run_id"] = row["mlflow_run_id"] or latest.run_id
            trial = self.tracker.child(latest.run_id)
            trial.set_tags({"tune.trial_id": row["trial_id"], "tune.status": row["status"]})
            if row["status"] == "EARLY_STOPPED" and latest.status in ("RUNNING", "FAILED"):
                # The trial's training may have seen the scheduler's stop as an error and ended its run FAILED.
                self._end_killed(latest, stopped_early=f"stopped by the scheduler at step {row['step']}")
            elif latest.status == "RUNNING" and row["status"] in ("FAILED", "FINISHED"):
                trial.end(row["status"], error=row.get("error"))

    def finish(self, spec: SweepSpec, rows: list[dict[str, Any]], best: dict[str, Any] | None,
               best_config_path: str | None) -> None:
        """The trial table, the counts, the best trial and its config in the parent run; then end it."""
        table = [{k: json.dumps(v) if isinstance(v, list | dict) else v for k, v in redact_value(row).items()}
                 for row in rows]
        self.tracker.log_table(table, "sweep/trials.json")
        self.tracker.set_tags({f"trials_{status.lower()}": str(sum(r["status"] == status for r in rows))
                               for status in DONE})
        if Path(spec.source).is_file():
            source = Path(spec.source)
            self.tracker.log_text(redact(source.read_text(encoding="utf-8")), f"sweep/{source.name}")
        if best is None:
            self.tracker.end("FAILED", error=f"no trial reported {spec.metric}")
            return
        tags = {"best_trial_id": best["trial_id"], "best_run_id": best.get("mlflow_run_id") or "",
                f"best_{spec.metric}": f"{best[spec.metric]:.6g}"}
        for name in param_columns(spec):
            value = best[name]
            tags[f"best.{name}"] = repr(value) if isinstance(value, float) else _show(value)
        self.tracker.set_tags(tags)
        self.tracker.log_metrics(0, {f"best_{spec.metric}": float(best[spec.metric])})
        self.tracker.flush(attempts=3)
        if best_config_path and not storage.is_uri(best_config_path):
            self.tracker.log_artifact(Path(best_config_path), "sweep")
        self.tracker.end("FINISHED")
