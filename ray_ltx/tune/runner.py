"""The sweep's driver: ``ray-ltx tune`` builds the latent cache once, then runs the trials with a Ray Tune Tuner.

Tune keeps its state in ``<output_dir>/tune/<name>``; beside it, ``ray_ltx_sweep.json`` keeps what
``--resume`` needs besides (the sweep as started, its base config, its parent run in the tracker), with
credentials masked: a resumed sweep takes them again from the config it is given. Ctrl+C or SIGTERM
stops the trials and saves the state; ``--resume`` restores the Tuner (``Tuner.restore``) and runs the
trials that had not ended. Everything goes through Ray Tune's public API.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from ray_ltx import storage, tracking
from ray_ltx.config import Config
from ray_ltx.errors import ConfigError, OutputDirError, UserError
from ray_ltx.redaction import MASK, redact, redact_value, redacted_config
from ray_ltx.tune.report import (
    DONE,
    SweepResult,
    SweepRuns,
    format_footer,
    format_table,
    param_columns,
    pick_best,
    trial_rows,
    write_best_config,
)
from ray_ltx.tune.spec import VALUE_LISTS, SweepSpec, base_config, load_sweep, parse_sweep, prepare
from ray_ltx.tune.trial import ray_ltx_trial

log = logging.getLogger(__name__)

SWEEP_STATE = "ray_ltx_sweep.json"  # beside Tune's experiment state: what --resume needs besides it


# -- the sweep's own state ------------------------------------------------------------------------------


@dataclass
class SweepState:
    """What --resume needs besides Tune's state. Saved with credentials masked; :meth:`load` takes them
    again from the config given to --resume."""

    sweep: dict[str, Any]  # the sweep file's content as started
    base: dict[str, Any]  # the base config of every trial
    parent_run_id: str | None

    def save(self, path: str, *, tracking_uri: str | None, sweep_file: str) -> None:
        storage.write_text(path, json.dumps({
            "sweep": redact_value(self.sweep), "base": redacted_config(self.base),
            "parent_run_id": self.parent_run_id, "tracking_uri": redact(tracking_uri) if tracking_uri else None,
            "sweep_file": sweep_file,
        }, indent=1, default=str))

    @classmethod
    def load(cls, path: str, config: Config, spec: SweepSpec) -> SweepState:
        """The saved state, with each masked credential taken from ``config`` (and the sweep file ``spec``)."""
        saved = json.loads(storage.read_text(path))
        base = saved["base"]
        if MASK in json.dumps(base):
            base = _unmask(base, base_config(config, spec), "")
        return cls(saved["sweep"], base, saved.get("parent_run_id"))


def _unmask(saved: Any, given: Any, where: str) -> Any:
    """``saved`` with each masked value taken from ``given``, the same setting as derived now."""
    if isinstance(saved, dict) and isinstance(given, dict):
        return {key: _unmask(value, given.get(key), f"{where}.{key}".lstrip(".")) for key, value in saved.items()}
    if isinstance(saved, list) and isinstance(given, list) and len(saved) == len(given):
        return [_unmask(s, g, where) for s, g in zip(saved, given, strict=True)]
    if not (isinstance(saved, str) and MASK in saved):
        return saved
    if given is None or (saved != MASK and redact_value(given) != saved):
        raise ConfigError(f"--resume: {where} was saved with its credentials masked ({saved}), and the config given "
                          f"now has {redact(str(given)) if given is not None else 'no value'} there; pass the same "
                          "--config and flags as when the sweep started")
    return given


# -- Tune: search, scheduler, signals -----------------------------------------------------------------


class FinalStepASHA(ASHAScheduler):
    """ASHA that never stops a trial on its final report.

    A trial's last report comes before its training writes the weights and ends its run: a stop there
    would lose them. Plain ASHA stops every trial at max_t, and a rung may fall on the last step. The
    final report skips ASHA's decision; ASHA still records it in the trial's rung when the trial completes.
    """

    def __init__(self, *, train_steps: int, **kwargs: Any):
        super().__init__(**kwargs)
        self.train_steps = train_steps

    def on_trial_result(self, tune_controller, trial, result: dict[str, Any]) -> str:
        if result.get("step", 0) >= int(trial.config.get("train_steps", self.train_steps)):
            return TrialScheduler.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)


def _param_space(spec: SweepSpec) -> dict[str, Any]:
    space: dict[str, Any] = {}
    for dim in spec.searched:
        if dim.kind == "choice":
            space[dim.field] = tune.choice(dim.values)
        elif dim.kind == "grid_search":
            space[dim.field] = tune.grid_search(dim.values)
        else:
            space[dim.field] = getattr(tune, dim.kind)(*dim.values)
    return space


def _max_concurrent(spec: SweepSpec, base: Config) -> int:
    from ray_ltx.cluster import cluster_gpus

    dist = base.distributed
    gpus = cluster_gpus()
    uses_gpu = dist.use_gpu if dist.use_gpu is not None else gpus > 0
    per_trial = dist.max_workers * dist.gpus_per_worker if uses_gpu else 0.0  # an elastic trial may grow to MAX
    if per_trial and gpus:
        bound = max(1, int(gpus // per_trial))
        if spec.max_concurrent_trials and spec.max_concurrent_trials > bound:
            log.warning("max_concurrent_trials %d: the cluster's %g GPUs fit %d trial(s) of %g GPUs; running %d at once",
                        spec.max_concurrent_trials, gpus, bound, per_trial, bound)
        return min(spec.max_concurrent_trials or bound, bound)
    return spec.max_concurrent_trials or 1


def _max_steps(spec: SweepSpec, base: dict[str, Any]) -> int:
    for dim in spec.searched:
        if dim.field == "train_steps":
            return int(max(dim.values if dim.kind in VALUE_LISTS else dim.values[:2]))
    return int(base["training"]["train_steps"])


def _scheduler(spec: SweepSpec, base: dict[str, Any]) -> FinalStepASHA | None:
    options = spec.scheduler
    if options.type == "none":
        return None
    if options.time_attr == "step":
        every = base["validation"]["validation_loss_steps"] or base["training"]["checkpointing_steps"]
        max_t = options.max_t or _max_steps(spec, base)
        grace = options.grace_period or min(every, max_t)
    else:
        max_t = options.max_t or 100
        grace = options.grace_period or 1
    if grace > max_t:
        raise ConfigError(f"{spec.source}: scheduler.grace_period {grace} is above max_t {max_t}")
    return FinalStepASHA(train_steps=int(base["training"]["train_steps"]), time_attr=options.time_attr, max_t=max_t,
                         grace_period=grace, reduction_factor=options.reduction_factor, brackets=options.brackets)


def _search_alg(spec: SweepSpec, concurrent: int):
    """The search algorithm, limited to ``concurrent`` trials at once (Tune ignores max_concurrent_trials
    for a BasicVariantGenerator passed in, so random/grid get the limit themselves)."""
    seed = spec.search_alg.seed
    if spec.search_alg.type == "optuna":
        try:
            import optuna  # noqa: F401
            from ray.tune.search.optuna import OptunaSearch
        except ImportError:
            raise ConfigError(f"{spec.source}: search_alg optuna needs Optuna: pip install optuna "
                              "(or pip install 'ray-ltx[optuna]'), or use search_alg random") from None
        from ray.tune.search import ConcurrencyLimiter

        return ConcurrencyLimiter(OptunaSearch(seed=seed), max_concurrent=concurrent)
    from ray.tune.search import BasicVariantGenerator

    return BasicVariantGenerator(random_state=seed, max_concurrent=concurrent)


@contextmanager
def _sigterm_as_ctrl_c() -> Iterator[None]:
    """SIGTERM (``ray job stop``, a pre-empted driver) stops the sweep as Ctrl+C does.

    Tune's documented graceful stop is SIGINT: it stops the trials and saves the experiment for
    ``Tuner.restore``. So SIGTERM raises SIGINT (a KeyboardInterrupt until Tune has taken it over).
    """
    if threading.current_thread() is not threading.main_thread():  # handlers can only be installed there
        yield
        return

    def on_term(signum, frame) -> None:
        log.warning("SIGTERM: stopping the sweep; resume it with `ray-ltx tune ... --resume`")
        signal.raise_signal(signal.SIGINT)

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# -- the driver -----------------------------------------------------------------------------------------


def run_sweep(config: Config, sweep_path: str | os.PathLike[str], *, resume: bool = False) -> SweepResult:
    """Run (or with ``resume`` continue) the sweep described by ``sweep_path`` over ``config``."""
    from ray_ltx.cluster import init_ray
    from ray_ltx.data.pipeline import ensure_cache

    started = time.monotonic()
    spec = load_sweep(sweep_path)
    output_dir = storage.absolute(config.output_dir)
    experiment_path = storage.join(output_dir, "tune", spec.name)
    state_path = storage.join(experiment_path, SWEEP_STATE)
    if resume:
        spec, state = _saved_sweep(config, spec, sweep_path, experiment_path, state_path)
    elif tune.Tuner.can_restore(experiment_path):
        raise OutputDirError(f"a sweep named '{spec.name}' already ran in {redact(experiment_path)}. Pass --resume "
                             "to continue it, or use another --output_dir or `name:` in the sweep file")
    else:
        state = SweepState(spec.raw, prepare(config, spec), None)
    base = state.base
    trial_base = Config.from_dict(base)
    init_ray(trial_base)
    concurrent = _max_concurrent(spec, trial_base)
    # Checked before the cache is built, so that a missing Optuna or a bad grace period fails fast.
    search_alg, scheduler = (None, None) if resume else (_search_alg(spec, concurrent), _scheduler(spec, base))
    ensure_cache(trial_base)  # the latent cache, once, before any trial: trials only open it

    runs = None
    tracking_uri = trial_base.tracking_uri if tracking.enabled(trial_base) else None
    if tracking.enabled(trial_base):
        runs = (SweepRuns.reopen(trial_base, state.parent_run_id) if state.parent_run_id
                else SweepRuns.start(trial_base, spec))
        state.parent_run_id = runs.run_id
        log.info("sweep %r: parent run %s", spec.name, runs.tracker.describe())
    if not resume:
        state.save(state_path, tracking_uri=tracking_uri, sweep_file=str(Path(sweep_path).absolute()))

    trainable = tune.with_parameters(ray_ltx_trial, base=base, ties=spec.ties, sweep_name=spec.name,
                                     metric=spec.metric, parent_run_id=state.parent_run_id)
    log.info("sweep %r: %s search, %s scheduler, %s trial(s), %d at a time; metric %s (%s); state in %s",
             spec.name, spec.search_alg.type, spec.scheduler.type, spec.expected_trials(), concurrent, spec.metric,
             spec.mode, redact(experiment_path))
    if resume:
        tuner = tune.Tuner.restore(experiment_path, trainable=trainable, resume_unfinished=True,
                                   resume_errored=False, restart_errored=False)
    else:
        tuner = _new_tuner(spec, trainable, search_alg, scheduler, storage.join(output_dir, "tune"))
    try:
        grid, stopped = _fit(tuner, trainable, experiment_path)
    except BaseException as error:
        if runs:
            runs.fail(error)
        raise

    rows = trial_rows(grid, spec, base, output_dir) if grid is not None else []
    if runs:
        runs.close_trials(rows)
    best = pick_best(rows, spec)
    print(format_table(rows, spec, best["trial_id"] if best else None))
    if stopped or len(rows) < spec.expected_trials() or any(r["status"] not in DONE for r in rows):
        if runs:
            runs.interrupted()
        print(f"sweep {spec.name!r} interrupted: {sum(r['status'] in DONE for r in rows)} of "
              f"{spec.expected_trials()} trials done. Continue it with: ray-ltx tune --config ... "
              f"--sweep {sweep_path} --resume")
        raise KeyboardInterrupt(f"sweep {spec.name} interrupted")

    best_path = write_best_config(best, spec, base, output_dir) if best else None
    if runs:
        runs.finish(spec, rows, best, best_path)
    result = SweepResult(spec.name, spec.metric, spec.mode, experiment_path, rows,
                         best["trial_id"] if best else None, best[spec.metric] if best else None,
                         {name: best[name] for name in param_columns(spec)} if best else {},
                         best_path, runs.run_id if runs else None, tracking_uri,
                         round(time.monotonic() - started, 1), runs.tracker.describe() if runs else None)
    print(format_footer(result))
    if best is None:
        errors = "; ".join(f"{r['trial_id']}: {r['error']}" for r in rows if r.get("error"))[:2000]
        raise UserError(f"sweep {spec.name!r}: no trial reported {spec.metric}" + (f" ({errors})" if errors else ""))
    return result


def _saved_sweep(config: Config, spec: SweepSpec, sweep_path: str | os.PathLike[str], experiment_path: str,
                 state_path: str) -> tuple[SweepSpec, SweepState]:
    """The sweep to continue (as it was started) and its state."""
    if not tune.Tuner.can_restore(experiment_path) or not storage.is_file(state_path):
        raise OutputDirError(f"--resume: no sweep named '{spec.name}' to resume in {redact(experiment_path)}; "
                             "run without --resume to start it (same --output_dir and sweep name)")
    state = SweepState.load(state_path, config, spec)
    if state.sweep != redact_value(spec.raw):
        log.warning("--resume: %s changed since the sweep started; continuing the sweep as it was started", sweep_path)
    return parse_sweep(state.sweep, f"{sweep_path} (as started)", name=spec.name), state


def _new_tuner(spec: SweepSpec, trainable, search_alg, scheduler: FinalStepASHA | None, tune_root: str) -> tune.Tuner:
    return tune.Tuner(
        trainable,
        param_space=_param_space(spec),
        tune_config=tune.TuneConfig(
            metric=spec.metric, mode=spec.mode, num_samples=spec.num_samples, search_alg=search_alg,
            scheduler=scheduler, reuse_actors=False,
            trial_name_creator=lambda trial: f"trial-{trial.trial_id}",
            trial_dirname_creator=lambda trial: trial.trial_id,  # report.py finds a trial's files by its id
        ),
        run_config=tune.RunConfig(name=spec.name, storage_path=tune_root,
                                  failure_config=tune.FailureConfig(max_failures=0)),
    )


def _fit(tuner: tune.Tuner, trainable, experiment_path: str) -> tuple[tune.ResultGrid | None, bool]:
    """Run the trials: (the ResultGrid, or None if nothing was saved; whether the run was cut short).

    Ctrl+C (or SIGTERM) lets Tune stop the trials and save its state; ``fit()`` then returns. A second
    Ctrl+C, or one before Tune took SIGINT over, raises instead: the results are what Tune saved.
    """
    try:
        with _sigterm_as_ctrl_c():
            return tuner.fit(), False
    except KeyboardInterrupt:
        if not tune.Tuner.can_restore(experiment_path):
            return None, True
        return tune.Tuner.restore(experiment_path, trainable=trainable).get_results(), True
