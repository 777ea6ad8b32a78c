"""Ray Tune sweeps over config fields: ``ray-ltx tune --config base.yaml --sweep tuning/rank_lr_grid.yaml``.

A sweep file (YAML) names the search space over config fields (the flat finetrainers names:
``rank``, ``lr``, ...), the metric and mode, how many trials, the scheduler and the search
algorithm::

    name: rank_lr_grid              # Tune experiment name (default: the file's stem)
    metric: val_loss                # what the workers report: val_loss (needs --holdout_samples), loss, ...
    mode: min
    num_samples: 1                  # trials (with grid_search: repeats of the whole grid)
    max_concurrent_trials: 2        # default: cluster GPUs // GPUs per trial (1 on CPU-only clusters)
    search_alg: grid                # random | grid | optuna, or {type: optuna, seed: 0}
    scheduler: none                 # none | fifo | asha, or {type: asha, grace_period: 100, ...}
    config:                         # optional: fixed settings for every trial (over --config and flags)
      train_steps: 500
    space:
      rank: {grid_search: [8, 16]}
      lora_alpha: {tie: rank}       # follows rank (optionally {tie: rank, factor: 2})
      lr: {grid_search: [1.0e-4, 1.0e-3]}

Distributions: ``choice``, ``grid_search`` (alias ``grid``), ``uniform``, ``loguniform``,
``quniform``, ``qloguniform`` (float fields), ``randint``, ``lograndint``, ``qrandint`` (int
fields), ``tie``; a plain value is a constant for every trial.

Each trial is one full ray-ltx training (:func:`ray_ltx.train.driver.train`, its own TorchTrainer)
in ``<output_dir>/trials/<trial_id>``, reading the latent cache the driver builds once before the
sweep. Every worker report carrying the metric becomes a Tune result (what ASHA and Optuna see).
A failing trial is recorded as failed and the sweep goes on. Tune keeps its state in
``<output_dir>/tune/<name>``, so an interrupted sweep continues with ``--resume`` (finished trials
are not run again). At the end: a table of all trials, ``<output_dir>/best_config.yaml`` (ready for
``ray-ltx train --config``), and in MLflow one parent run for the sweep with a nested run per trial.
"""

from __future__ import annotations

import copy
import difflib
import json
import logging
import math
import os
import re
import signal
import threading
import time
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from ray_ltx import storage
from ray_ltx.config import FIELD_SECTION, SECTIONS, Config, build_config
from ray_ltx.errors import ConfigError, OutputDirError, UserError

log = logging.getLogger(__name__)

SWEEP_STATE = "ray_ltx_sweep.json"  # beside Tune's experiment state: what --resume needs besides it
TRIAL_RESULT = "trial_result.json"  # in each trial's output_dir: what its train() returned
BEST_CONFIG = "best_config.yaml"

#: what the training workers report (ray_ltx.train.loop), so what a sweep can optimise
REPORTED_METRICS = ("val_loss", "loss", "grad_norm", "lr", "step_time_s", "samples_per_s", "tokens_per_s",
                    "epoch", "skipped_steps", "gpu_memory_allocated_gib", "gpu_memory_reserved_gib")
SWEEP_KEYS = ("name", "description", "metric", "mode", "num_samples", "max_concurrent_trials", "search_alg",
              "scheduler", "config", "space")
SEARCH_ALGS = {"random": ("seed",), "grid": (), "optuna": ("seed",)}
SCHEDULERS = {"asha": ("time_attr", "grace_period", "reduction_factor", "max_t", "brackets"), "none": (), "fifo": ()}
VALUE_LISTS = ("choice", "grid_search")
FLOAT_RANGES = ("uniform", "loguniform", "quniform", "qloguniform")
INT_RANGES = ("randint", "lograndint", "qrandint")
DISTRIBUTIONS = (*VALUE_LISTS, *FLOAT_RANGES, *INT_RANGES, "tie")
ALIASES = {"grid": "grid_search"}

# Fields a sweep may not vary: every trial shares the sweep's latent cache, output layout and cluster shape.
_FIXED_SECTIONS = {"tracking": "MLflow settings are the sweep's, shared by all trials"}
_VARIABLE_IN_FIXED_SECTIONS = {
    "data": {"caption_dropout_p", "dataloader_num_workers"},
    "model": {"transformer_dtype", "layerwise_upcasting_modules", "layerwise_upcasting_storage_dtype"},
    "distributed": {"backend", "deepspeed_stage", "offload_optimizer", "offload_params"},
}
_FIXED_REASONS = {
    "data": "it changes the latent cache (or the held-out samples) that all trials share; run one sweep per setting",
    "model": "it changes the latent cache that all trials share; run one sweep per model",
    "distributed": "it changes where trials run or how many GPUs each needs; set it in --config",
}
_NEVER_SEARCHED = {
    "output_dir": "each trial gets its own <output_dir>/trials/<trial_id>",
    "resume_from_checkpoint": "the sweep resumes trials itself (ray-ltx tune --resume)",
    "overwrite_output_dir": "each trial gets a fresh output directory",
}


# -- the sweep file --------------------------------------------------------------------------------


@dataclass
class Dimension:
    """One entry of ``space``: a field and how it varies."""

    field: str
    kind: str  # constant, tie, or one of DISTRIBUTIONS
    values: list[Any] = field(default_factory=list)  # choice/grid_search values, or range arguments
    value: Any = None  # constant
    target: str | None = None  # tie
    factor: float = 1.0  # tie

    @property
    def searched(self) -> bool:
        return self.kind not in ("constant", "tie")

    def describe(self) -> str:
        if self.kind == "constant":
            return json.dumps(self.value)
        if self.kind == "tie":
            return f"tie {self.target}" + (f" x {self.factor:g}" if self.factor != 1 else "")
        return f"{self.kind} {json.dumps(self.values)}"


@dataclass
class SweepSpec:
    name: str
    source: str
    metric: str = "val_loss"
    mode: str = "min"
    num_samples: int = 1
    max_concurrent_trials: int | None = None
    search_alg: str = "random"
    search_options: dict[str, Any] = field(default_factory=dict)
    scheduler: str = "asha"
    scheduler_options: dict[str, Any] = field(default_factory=dict)
    fixed: dict[str, Any] = field(default_factory=dict)
    dimensions: list[Dimension] = field(default_factory=list)
    description: str = ""
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def searched(self) -> list[Dimension]:
        return [d for d in self.dimensions if d.searched]

    @property
    def ties(self) -> list[Dimension]:
        return [d for d in self.dimensions if d.kind == "tie"]

    @property
    def constants(self) -> dict[str, Any]:
        return {d.field: d.value for d in self.dimensions if d.kind == "constant"}

    def expected_trials(self) -> int:
        grid = math.prod(len(d.values) for d in self.searched if d.kind == "grid_search")
        return self.num_samples * grid


def _suggest(name: str, candidates: list[str] | tuple[str, ...]) -> str:
    prefixed = [c for c in candidates if len(name) >= 3 and c.startswith(name)]
    close = prefixed[:1] or difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _field_type(name: str) -> Any:
    """int, float, bool, str, list, ... of a config leaf (Optional and Annotated stripped)."""
    section = FIELD_SECTION[name]
    cls = Config if section is None else SECTIONS[section]
    annotation = cls.model_fields[name].annotation
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            annotation = args[0]
        else:
            return origin or annotation


def _field_name(key: Any, source: str) -> str:
    """A space key: a flat field name (``lr``) or ``section.field`` (``optimizer.lr``)."""
    text = str(key)
    section, _, leaf = text.rpartition(".")
    if section and section in SECTIONS and leaf in SECTIONS[section].model_fields:
        return leaf
    if text in FIELD_SECTION:
        return text
    raise ConfigError(f"{source}: space: unknown config field '{text}'{_suggest(text, list(FIELD_SECTION))}; "
                      "run `ray-ltx train --help` for the valid names")


def _check_searchable(name: str, source: str) -> None:
    if name in _NEVER_SEARCHED:
        raise ConfigError(f"{source}: space: '{name}' cannot be swept: {_NEVER_SEARCHED[name]}")
    section = FIELD_SECTION[name]
    if section in _FIXED_SECTIONS:
        raise ConfigError(f"{source}: space: '{name}' cannot be swept: {_FIXED_SECTIONS[section]}")
    if section in _VARIABLE_IN_FIXED_SECTIONS and name not in _VARIABLE_IN_FIXED_SECTIONS[section]:
        raise ConfigError(f"{source}: space: '{name}' cannot be swept: {_FIXED_REASONS[section]}")


def _number(value: Any, what: str, source: str, integer: bool = False) -> float | int:
    """YAML 1.1 reads ``1e-4`` (no dot) as a string; accept it as the number it means."""
    if isinstance(value, bool):
        raise ConfigError(f"{source}: {what}: expected a number, got {value!r}")
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ConfigError(f"{source}: {what}: expected a number, got {value!r}") from None
    if not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{source}: {what}: expected a number, got {value!r}")
    if integer:
        if float(value) != int(value):
            raise ConfigError(f"{source}: {what}: expected a whole number, got {value!r}")
        return int(value)
    return float(value)


def _parse_dimension(name: str, entry: Any, source: str) -> Dimension:
    where = f"space.{name}"
    kind_of = _field_type(name)
    if not isinstance(entry, dict):
        if isinstance(entry, list) and kind_of is not list:
            raise ConfigError(f"{source}: {where}: a list is not a search space for '{name}'; write "
                              f"{{choice: {json.dumps(entry)}}} or {{grid_search: {json.dumps(entry)}}}")
        return Dimension(name, "constant", value=entry)
    keys = [ALIASES.get(str(k), str(k)) for k in entry]
    kinds = [k for k in keys if k in DISTRIBUTIONS]
    extra = [k for k in keys if k not in DISTRIBUTIONS and not (k == "factor" and "tie" in keys)]
    if extra or len(kinds) != 1:
        bad = extra[0] if extra else ", ".join(keys) or "{}"
        hint = _suggest(extra[0], DISTRIBUTIONS) if extra else ""
        raise ConfigError(f"{source}: {where}: unknown distribution '{bad}'{hint}; use one of "
                          f"{', '.join(DISTRIBUTIONS)} (e.g. {{loguniform: [1.0e-5, 3.0e-4]}})")
    kind = kinds[0]
    raw = next(v for k, v in entry.items() if ALIASES.get(str(k), str(k)) == kind)
    if kind == "tie":
        target = _field_name(raw, source)
        factor = _number(entry.get("factor", 1.0), f"{where}.factor", source)
        if target == name:
            raise ConfigError(f"{source}: {where}: a field cannot be tied to itself")
        return Dimension(name, "tie", target=target, factor=factor)
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{source}: {where}: {kind} takes a non-empty list, e.g. "
                          + ("{choice: [16, 32, 64]}" if kind in VALUE_LISTS else f"{{{kind}: [low, high]}}"))
    if kind in VALUE_LISTS:
        return Dimension(name, kind, values=list(raw))
    # numeric ranges
    if kind_of not in (int, float):
        raise ConfigError(f"{source}: {where}: {kind} needs a numeric field, but '{name}' is not a number; "
                          "use choice or grid_search")
    if kind in FLOAT_RANGES and kind_of is int:
        suggestion = {"uniform": "randint", "loguniform": "lograndint", "quniform": "qrandint",
                      "qloguniform": "qrandint"}[kind]
        raise ConfigError(f"{source}: {where}: '{name}' takes whole numbers; use {suggestion} or choice instead of {kind}")
    quantized = kind in ("quniform", "qloguniform", "qrandint")
    wanted = 3 if quantized else 2
    if len(raw) != wanted:
        shape = "[low, high, q]" if quantized else "[low, high]"
        raise ConfigError(f"{source}: {where}: {kind} takes {shape}, got {raw!r}")
    integer = kind in INT_RANGES
    values = [_number(v, where, source, integer=integer) for v in raw]
    low, high = values[0], values[1]
    if not low < high:
        raise ConfigError(f"{source}: {where}: {kind} needs low < high, got {raw!r}")
    if kind in ("loguniform", "qloguniform", "lograndint") and low <= 0:
        raise ConfigError(f"{source}: {where}: {kind} needs low > 0 (a log scale), got {raw!r}")
    if quantized and values[2] <= 0:
        raise ConfigError(f"{source}: {where}: {kind} needs q > 0, got {raw!r}")
    return Dimension(name, kind, values=values)


def _parse_choice(value: Any, options: dict[str, tuple[str, ...]], key: str, source: str,
                  default: str) -> tuple[str, dict[str, Any]]:
    if value is None:
        return default, {}
    if isinstance(value, str):
        kind, opts = value, {}
    elif isinstance(value, dict):
        opts = dict(value)
        kind = str(opts.pop("type", default))
    else:
        raise ConfigError(f"{source}: {key}: expected a name or a mapping with 'type', got {value!r}")
    kind = kind.lower()
    if kind not in options:
        raise ConfigError(f"{source}: {key}: unknown {key} '{kind}'{_suggest(kind, list(options))}; "
                          f"use one of {', '.join(options)}")
    for opt in opts:
        if opt not in options[kind]:
            allowed = ", ".join(options[kind]) or "none"
            raise ConfigError(f"{source}: {key}: unknown option '{opt}' for {kind}{_suggest(str(opt), options[kind])}"
                              f" (options: {allowed})")
    return kind, opts


def parse_sweep(data: Any, source: str, name: str | None = None) -> SweepSpec:
    """Check a sweep mapping (the YAML file's content) and return it as a :class:`SweepSpec`."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a sweep file must be a mapping with 'space', 'metric', ..., "
                          f"got {type(data).__name__}")
    for key in data:
        if key not in SWEEP_KEYS:
            raise ConfigError(f"{source}: unknown sweep setting '{key}'{_suggest(str(key), SWEEP_KEYS)}; "
                              f"valid: {', '.join(SWEEP_KEYS)}")
    sweep_name = str(data.get("name") or name or "sweep")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", sweep_name):
        raise ConfigError(f"{source}: name: {sweep_name!r} must be letters, digits, '_', '-' or '.' "
                          "(it names a directory)")
    metric = str(data.get("metric") or "val_loss")
    if metric not in REPORTED_METRICS:
        raise ConfigError(f"{source}: metric: '{metric}' is not reported by training"
                          f"{_suggest(metric, REPORTED_METRICS)}; use one of {', '.join(REPORTED_METRICS)}")
    mode = str(data.get("mode") or "min").lower()
    if mode not in ("min", "max"):
        raise ConfigError(f"{source}: mode: expected min or max, got {data.get('mode')!r}")
    space = data.get("space")
    if not isinstance(space, dict) or not space:
        raise ConfigError(f"{source}: space: expected a mapping of config fields to distributions, e.g.\n"
                          "  space:\n    rank: {choice: [16, 32, 64, 128]}\n    lr: {loguniform: [1.0e-5, 3.0e-4]}")
    dimensions: list[Dimension] = []
    seen: set[str] = set()
    for key, entry in space.items():
        field_name = _field_name(key, source)
        if field_name in seen:
            raise ConfigError(f"{source}: space: '{field_name}' is given twice")
        seen.add(field_name)
        _check_searchable(field_name, source)
        dimensions.append(_parse_dimension(field_name, entry, source))
    by_field = {d.field: d for d in dimensions}
    for dim in dimensions:
        if dim.kind == "tie" and by_field.get(dim.target) is not None and by_field[dim.target].kind == "tie":
            raise ConfigError(f"{source}: space.{dim.field}: tied to '{dim.target}', which is itself tied; "
                              f"tie it to '{by_field[dim.target].target}' directly")
    if not any(d.searched for d in dimensions):
        raise ConfigError(f"{source}: space: nothing to search; give at least one field a distribution "
                          "(choice, grid_search, loguniform, ...)")
    has_grid = any(d.kind == "grid_search" for d in dimensions)
    search_alg, search_options = _parse_choice(data.get("search_alg"), SEARCH_ALGS, "search_alg", source, "random")
    scheduler, scheduler_options = _parse_choice(data.get("scheduler"), SCHEDULERS, "scheduler", source, "asha")
    if scheduler == "fifo":
        scheduler = "none"
    if search_alg == "grid":
        for dim in dimensions:
            if dim.searched and dim.kind not in VALUE_LISTS:
                raise ConfigError(f"{source}: space.{dim.field}: search_alg grid needs finite values "
                                  f"(choice or grid_search), not {dim.kind}; use search_alg random or optuna")
            if dim.kind == "choice":
                dim.kind = "grid_search"
        has_grid = True
    if search_alg == "optuna":
        for dim in dimensions:
            if dim.kind == "grid_search":
                raise ConfigError(f"{source}: space.{dim.field}: optuna samples its trials; use choice instead of "
                                  "grid_search (or search_alg grid)")
            if dim.kind == "choice" and any(isinstance(v, list | dict) for v in dim.values):
                raise ConfigError(f"{source}: space.{dim.field}: optuna chooses among scalar values only; "
                                  "use search_alg random for lists")
    default_samples = 1 if has_grid and all(d.kind == "grid_search" for d in dimensions if d.searched) else 10
    num_samples = data.get("num_samples", default_samples)
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ConfigError(f"{source}: num_samples: expected a whole number >= 1, got {num_samples!r}")
    concurrent = data.get("max_concurrent_trials")
    if concurrent is not None and (isinstance(concurrent, bool) or not isinstance(concurrent, int) or concurrent < 1):
        raise ConfigError(f"{source}: max_concurrent_trials: expected a whole number >= 1, got {concurrent!r}")
    for opt in ("grace_period", "max_t", "brackets"):
        if opt in scheduler_options:
            scheduler_options[opt] = _number(scheduler_options[opt], f"scheduler.{opt}", source, integer=True)
            if scheduler_options[opt] < 1:
                raise ConfigError(f"{source}: scheduler.{opt}: must be >= 1, got {scheduler_options[opt]}")
    if "reduction_factor" in scheduler_options:
        scheduler_options["reduction_factor"] = _number(scheduler_options["reduction_factor"],
                                                        "scheduler.reduction_factor", source)
        if scheduler_options["reduction_factor"] <= 1:
            raise ConfigError(f"{source}: scheduler.reduction_factor: must be > 1")
    time_attr = scheduler_options.get("time_attr")
    if time_attr is not None and time_attr not in ("step", "training_iteration", "time_total_s"):
        raise ConfigError(f"{source}: scheduler.time_attr: use step (optimizer steps), training_iteration "
                          f"(reports) or time_total_s, got {time_attr!r}")
    if "seed" in search_options:
        search_options["seed"] = _number(search_options["seed"], "search_alg.seed", source, integer=True)
    fixed = data.get("config") or {}
    if not isinstance(fixed, dict):
        raise ConfigError(f"{source}: config: expected a mapping of settings, got {fixed!r}")
    if "output_dir" in fixed:
        raise ConfigError(f"{source}: config.output_dir: the sweep's output directory comes from --output_dir "
                          "(or --config), not from the sweep file")
    return SweepSpec(
        name=sweep_name, source=source, metric=metric, mode=mode, num_samples=num_samples,
        max_concurrent_trials=concurrent, search_alg=search_alg, search_options=search_options,
        scheduler=scheduler, scheduler_options=scheduler_options, fixed=fixed, dimensions=dimensions,
        description=str(data.get("description") or ""), raw=copy.deepcopy(data),
    )


def load_sweep(path: str | os.PathLike[str]) -> SweepSpec:
    """Read and check a sweep YAML file (structure only; values are checked against a config by :func:`prepare`)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep file {path} does not exist; pass an existing YAML file to --sweep (see tuning/)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: not valid YAML ({getattr(error, 'problem', error)})") from None
    return parse_sweep(data, str(path), name=path.stem)


# -- configs of the sweep, its trials and the winner -------------------------------------------


def _plain(value: Any) -> Any:
    """numpy scalars (Tune samples them) -> Python values."""
    if hasattr(value, "item") and callable(value.item) and not isinstance(value, list | dict | str):
        try:
            return value.item()
        except (TypeError, ValueError):
            return value
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def _config_from(data: dict[str, Any], source: str) -> Config:
    return build_config(data, source=source)


def _set(data: dict[str, Any], name: str, value: Any) -> None:
    section = FIELD_SECTION[name]
    if section is None:
        data[name] = value
    else:
        data.setdefault(section, {})[name] = value


def _get(data: dict[str, Any], name: str) -> Any:
    section = FIELD_SECTION[name]
    return data[name] if section is None else data.get(section, {}).get(name)


def apply_params(base: dict[str, Any], params: dict[str, Any], ties: list[Dimension]) -> dict[str, Any]:
    """The config dict of a trial: base < searched values < tied values."""
    data = copy.deepcopy(base)
    for name, value in params.items():
        _set(data, name, _plain(value))
    for tie in ties:
        value = _get(data, tie.target)
        if tie.factor != 1:
            value = value * tie.factor
        if _field_type(tie.field) is int and isinstance(value, float) and value.is_integer():
            value = int(value)
        _set(data, tie.field, value)
    return data


def tied_values(params: dict[str, Any], ties: list[Dimension], base: dict[str, Any]) -> dict[str, Any]:
    data = apply_params(base, params, ties)
    return {tie.field: _get(data, tie.field) for tie in ties}


def trial_config(base: dict[str, Any], params: dict[str, Any], ties: list[Dimension], *, trial_id: str,
                 sweep_name: str) -> Config:
    """The config one trial trains with: its own output_dir and Train run, the sweep's shared cache."""
    data = apply_params(base, params, ties)
    output_dir = base["output_dir"]
    data["output_dir"] = storage.join(output_dir, "trials", trial_id)
    data["data"]["cache_dir"] = base["data"]["cache_dir"]
    data["data"]["data_root"] = None  # the cache is built (once) by the sweep's driver; trials only read it
    data["data"]["dataset_file"] = data["data"]["dataset_config"] = None
    data["data"]["rebuild_cache"] = False
    data["distributed"]["run_name"] = f"{sweep_name}-{trial_id}"
    data["training"]["resume_from_checkpoint"] = "latest"  # a trial restarted by --resume continues
    data["training"]["overwrite_output_dir"] = False
    data["tracking"]["mlflow_run_name"] = None
    return _config_from(data, f"sweep {sweep_name}, trial {trial_id}")


def best_config(base: dict[str, Any], params: dict[str, Any], ties: list[Dimension], sweep_name: str) -> Config:
    """The winner as a ready-to-train config: the base with the best values, its own output_dir."""
    data = apply_params(base, params, ties)
    data["output_dir"] = storage.join(base["output_dir"], "best")
    data["training"]["resume_from_checkpoint"] = None
    data["tracking"]["mlflow_run_name"] = f"{sweep_name}-best"
    return _config_from(data, f"the best config of sweep {sweep_name}")


def prepare(config: Config, spec: SweepSpec) -> dict[str, Any]:
    """The sweep's base config (resolved, as a dict) after checking every searched value against it."""
    source = spec.source
    resolved = build_config(config.to_dict(), spec.fixed, spec.constants,
                            source=f"{source} (--config, the sweep's config and constants)").resolved()
    base = resolved.to_dict()
    base["data"]["cache_dir"] = storage.absolute(resolved.cache_dir)
    if spec.metric == "val_loss" and not base["data"]["holdout_samples"]:
        raise ConfigError(f"{source}: metric val_loss is the loss on held-out samples, but --holdout_samples is 0; "
                          "pass --holdout_samples N (e.g. 2) or set `metric: loss` in the sweep file")
    for dim in spec.searched:
        if dim.kind in VALUE_LISTS:
            dim.values = [_check_value(base, dim.field, value, spec) for value in dim.values]
            if len({json.dumps(v, sort_keys=True) for v in dim.values}) != len(dim.values):
                raise ConfigError(f"{source}: space.{dim.field}: {dim.kind} lists the same value twice: {dim.values!r}")
        else:
            for bound in dim.values[:2]:
                _check_value(base, dim.field, bound, spec)
    return base


def _check_value(base: dict[str, Any], name: str, value: Any, spec: SweepSpec) -> Any:
    """The value as the config reads it (e.g. "1e-4" -> 0.0001), or a ConfigError naming the sweep entry."""
    where = f"{spec.source} (space.{name} = {value!r})"
    try:
        data = apply_params(base, {name: value}, spec.ties)
    except TypeError as error:
        raise ConfigError(f"{where}: a tie cannot scale this value ({error})") from None
    return _get(_config_from(data, where).to_dict(), name)


# -- the trial (runs in a Tune trial actor) -----------------------------------------------------

class MetricReportCallback(TuneReportCallback):
    """Forwards to Tune only the worker reports that carry the metric: a report without it (a checkpoint
    between two validations) would be a Tune result that schedulers and searchers cannot use."""

    def __init__(self, metric: str):
        super().__init__()
        self.metric = metric

    def after_report(self, run_context, metrics, checkpoint):
        if not metrics or self.metric not in metrics[0]:
            return
        super().after_report(run_context, metrics, checkpoint)


def ray_ltx_trial(params: dict[str, Any], *, base: dict[str, Any], ties: list[dict[str, Any]], sweep_name: str,
                  metric: str, parent_run_id: str | None) -> None:
    """One Tune trial: one full training with the trial's values; its worker reports become Tune results."""
    import ray.tune

    from ray_ltx.train.driver import train

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    trial_id = ray.tune.get_context().get_trial_id()
    tie_dims = [Dimension(**t) for t in ties]
    config = trial_config(base, params, tie_dims, trial_id=trial_id, sweep_name=sweep_name)
    log.info("trial %s: %s -> %s", trial_id, params, config.output_dir)
    outcome = train(config, callbacks=[MetricReportCallback(metric)], parent_run_id=parent_run_id,
                    run_name=f"trial-{trial_id}", quiet=True)
    storage.write_text(storage.join(config.output_dir, TRIAL_RESULT), json.dumps({
        "trial_id": trial_id, "steps": outcome.steps, "final_loss": outcome.final_loss,
        "mlflow_run_id": outcome.mlflow_run_id, "seconds": outcome.seconds, "checkpoint": outcome.checkpoint,
    }, indent=1))


class FinalStepASHA(ASHAScheduler):
    """ASHA that never stops a trial on its final report (it has trained all its steps and is writing its
    outputs): plain ASHA stops every trial reaching max_t, and a rung can fall on the last step."""

    def __init__(self, *, train_steps: int, **kwargs: Any):
        super().__init__(**kwargs)
        self._train_steps = train_steps

    def on_trial_result(self, tune_controller, trial, result):
        action = super().on_trial_result(tune_controller, trial, result)
        steps = int(trial.config.get("train_steps", self._train_steps))
        if action == TrialScheduler.STOP and result.get("step", 0) >= steps:
            self._num_stopped -= 1
            return TrialScheduler.CONTINUE
        return action


def _trial_dirname(trial) -> str:
    return trial.trial_id


def _trial_name(trial) -> str:
    return f"trial-{trial.trial_id}"


# -- the driver ---------------------------------------------------------------------------------


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


def _param_space(spec: SweepSpec) -> dict[str, Any]:
    from ray import tune

    space: dict[str, Any] = {}
    for dim in spec.searched:
        args = dim.values
        if dim.kind == "choice":
            space[dim.field] = tune.choice(args)
        elif dim.kind == "grid_search":
            space[dim.field] = tune.grid_search(args)
        else:
            space[dim.field] = getattr(tune, dim.kind)(*args)
    return space


def _max_concurrent(spec: SweepSpec, base: Config) -> int:
    from ray_ltx.cluster import cluster_gpus

    dist = base.distributed
    gpus = cluster_gpus()
    uses_gpu = dist.use_gpu if dist.use_gpu is not None else gpus > 0
    per_trial = dist.num_workers * dist.gpus_per_worker if uses_gpu else 0.0
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
            return int(max(dim.values[:2] if dim.kind not in VALUE_LISTS else dim.values))
    return int(base["training"]["train_steps"])


def _scheduler(spec: SweepSpec, base: dict[str, Any]):
    if spec.scheduler == "none":
        return None
    opts = dict(spec.scheduler_options)
    time_attr = opts.get("time_attr", "step")
    if time_attr == "step":
        every = base["validation"]["validation_loss_steps"] or base["training"]["checkpointing_steps"]
        max_t = opts.get("max_t", _max_steps(spec, base))
        grace = opts.get("grace_period", min(every, max_t))
    else:
        max_t = opts.get("max_t", 100)
        grace = opts.get("grace_period", 1)
    if grace > max_t:
        raise ConfigError(f"{spec.source}: scheduler.grace_period {grace} is above max_t {max_t}")
    return FinalStepASHA(train_steps=int(base["training"]["train_steps"]), time_attr=time_attr, max_t=max_t,
                         grace_period=grace, reduction_factor=opts.get("reduction_factor", 3),
                         brackets=opts.get("brackets", 1))


def _search_alg(spec: SweepSpec, concurrent: int):
    """The search algorithm, limited to ``concurrent`` trials at once (Tune ignores max_concurrent_trials
    for a BasicVariantGenerator passed in, so random/grid get the limit themselves)."""
    if spec.search_alg == "optuna":
        try:
            import optuna  # noqa: F401
            from ray.tune.search.optuna import OptunaSearch
        except ImportError:
            raise ConfigError(f"{spec.source}: search_alg optuna needs Optuna: pip install optuna "
                              "(or pip install 'ray-ltx[optuna]'), or use search_alg random") from None
        from ray.tune.search import ConcurrencyLimiter

        return ConcurrencyLimiter(OptunaSearch(seed=spec.search_options.get("seed")), max_concurrent=concurrent)
    from ray.tune.search import BasicVariantGenerator

    return BasicVariantGenerator(random_state=spec.search_options.get("seed"), max_concurrent=concurrent)


class _Signals:
    """SIGTERM (``ray job stop``, a pre-empted driver) stops the sweep as Ctrl+C does: Tune saves its state."""

    def __enter__(self):
        self.previous = None
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.getsignal(signal.SIGTERM)
            signal.signal(signal.SIGTERM, self._on_term)
        return self

    @staticmethod
    def _on_term(signum, frame):
        handler = signal.getsignal(signal.SIGUSR1) if hasattr(signal, "SIGUSR1") else None
        if callable(handler):
            log.warning("SIGTERM: stopping the sweep; resume it with `ray-ltx tune ... --resume`")
            handler(signum, frame)  # Tune's interrupt handler: stop the trials, save the experiment state
        else:
            raise KeyboardInterrupt("SIGTERM")

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)
        return False


def _tracking(base_config: Config):
    from ray_ltx import tracking

    return tracking if tracking.enabled(base_config) else None


def run_sweep(config: Config, sweep_path: str | os.PathLike[str], *, resume: bool = False) -> SweepResult:
    """Run (or with ``resume`` continue) the sweep described by ``sweep_path`` over ``config``."""
    from ray import tune

    from ray_ltx.cluster import init_ray
    from ray_ltx.data.pipeline import ensure_cache

    started = time.monotonic()
    spec = load_sweep(sweep_path)
    output_dir = storage.absolute(config.output_dir)
    tune_root = storage.join(output_dir, "tune")
    experiment_path = storage.join(tune_root, spec.name)
    state_path = storage.join(experiment_path, SWEEP_STATE)
    restorable = tune.Tuner.can_restore(experiment_path)

    state: dict[str, Any] = {}
    if resume:
        if not restorable or not storage.is_file(state_path):
            raise OutputDirError(f"--resume: no sweep named '{spec.name}' to resume in {experiment_path}; "
                                 "run without --resume to start it (same --output_dir and sweep name)")
        state = json.loads(storage.read_text(state_path))
        if state.get("sweep") != spec.raw:
            log.warning("--resume: %s changed since the sweep started; continuing the sweep as it was started",
                        sweep_path)
        spec = parse_sweep(state["sweep"], f"{sweep_path} (as started)", name=spec.name)
        base = state["base"]
    else:
        if restorable:
            raise OutputDirError(
                f"a sweep named '{spec.name}' already ran in {experiment_path}. Pass --resume to continue it, "
                "or use another --output_dir or `name:` in the sweep file")
        base = prepare(config, spec)
    base_config = Config.from_dict(base)
    tracking = _tracking(base_config)
    init_ray(base_config)
    concurrent = _max_concurrent(spec, base_config)
    if not resume:
        search_alg, scheduler = _search_alg(spec, concurrent), _scheduler(spec, base)

    # The latent cache, once, before any trial: trials only open it.
    ensure_cache(base_config)

    uri = base_config.tracking_uri if tracking else None
    parent_run_id = state.get("parent_run_id")
    if tracking and not parent_run_id:
        parent_run_id = tracking.start_run(base_config, run_name=spec.name, extra_params={
            "sweep.name": spec.name, "sweep.metric": spec.metric, "sweep.mode": spec.mode,
            "sweep.num_samples": spec.num_samples, "sweep.search_alg": spec.search_alg,
            "sweep.scheduler": spec.scheduler, "sweep.space": json.dumps({d.field: d.describe() for d in spec.dimensions}),
        }, tags={"ray_ltx.kind": "sweep", "ray_ltx.sweep": spec.name})
        log.info("MLflow parent run %s for sweep %r", parent_run_id, spec.name)
    elif tracking:
        _reopen_parent(uri, parent_run_id)
    if not resume:
        storage.write_text(state_path, json.dumps({
            "name": spec.name, "sweep": spec.raw, "base": base, "parent_run_id": parent_run_id,
            "tracking_uri": uri, "sweep_file": str(Path(sweep_path).absolute()),
        }, indent=1, default=str))

    trainable = tune.with_parameters(
        ray_ltx_trial, base=base, ties=[_tie_dict(t) for t in spec.ties], sweep_name=spec.name,
        metric=spec.metric, parent_run_id=parent_run_id)
    log.info("sweep %r: %s search, %s scheduler, %s trial(s), %d at a time; metric %s (%s); state in %s",
             spec.name, spec.search_alg, spec.scheduler, spec.expected_trials(), concurrent, spec.metric,
             spec.mode, experiment_path)
    interrupted = False
    try:
        with _Signals():
            if resume:
                tuner = tune.Tuner.restore(experiment_path, trainable=trainable, resume_unfinished=True,
                                           resume_errored=False, restart_errored=False)
            else:
                tuner = tune.Tuner(
                    trainable,
                    param_space=_param_space(spec),
                    tune_config=tune.TuneConfig(
                        metric=spec.metric, mode=spec.mode, num_samples=spec.num_samples,
                        search_alg=search_alg, scheduler=scheduler, reuse_actors=False,
                        trial_name_creator=_trial_name, trial_dirname_creator=_trial_dirname,
                    ),
                    run_config=tune.RunConfig(name=spec.name, storage_path=tune_root,
                                              failure_config=tune.FailureConfig(max_failures=0)),
                )
            grid = tuner.fit()
    except KeyboardInterrupt:
        interrupted = True
        grid = None
    except BaseException as error:
        if tracking:
            tracking.end_run(uri, parent_run_id, "FAILED", error=f"{type(error).__name__}: {error}")
        raise
    trials = _trials(grid, experiment_path)
    rows = [_row(trial, spec, base, output_dir) for trial in trials]
    if tracking:
        _finish_children(uri, parent_run_id, rows)
    interrupted = interrupted or len(rows) < spec.expected_trials() or any(
        r["status"] in ("PENDING", "RUNNING", "PAUSED") for r in rows)

    best = _best(rows, spec)
    best_path = None
    best_params: dict[str, Any] = {}
    print(format_table(rows, spec, best["trial_id"] if best else None))
    if interrupted:
        if tracking:
            tracking.end_run(uri, parent_run_id, "KILLED", error="sweep interrupted; continue with --resume")
        print(f"sweep {spec.name!r} interrupted: {sum(r['status'] in ('FINISHED', 'EARLY_STOPPED', 'FAILED') for r in rows)}"
              f" of {spec.expected_trials()} trials done. Continue it with: ray-ltx tune --config ... "
              f"--sweep {sweep_path} --resume")
        raise KeyboardInterrupt(f"sweep {spec.name} interrupted")

    if best is not None:
        best_params = {name: best[name] for name in _param_columns(spec)}
        searched = {d.field: best[d.field] for d in spec.searched}
        chosen = best_config(base, searched, spec.ties, spec.name)
        best_path = storage.join(output_dir, BEST_CONFIG)
        header = (f"# ray-ltx: best config of sweep '{spec.name}' ({spec.metric} {spec.mode}): trial "
                  f"{best['trial_id']}, {spec.metric} = {best[spec.metric]:.6g}\n"
                  f"# values: {json.dumps(best_params)}\n"
                  f"# train it: ray-ltx train --config {best_path}\n")
        storage.write_text(best_path, header + chosen.to_yaml())
    if tracking:
        _finish_parent(uri, parent_run_id, spec, rows, best, best_params, best_path)
    result = SweepResult(spec.name, spec.metric, spec.mode, experiment_path, rows,
                         best["trial_id"] if best else None, best[spec.metric] if best else None, best_params,
                         best_path, parent_run_id, uri, round(time.monotonic() - started, 1))
    print(format_footer(result))
    if best is None:
        errors = "; ".join(f"{r['trial_id']}: {r['error']}" for r in rows if r.get("error"))[:2000]
        raise UserError(f"sweep {spec.name!r}: no trial reported {spec.metric}" + (f" ({errors})" if errors else ""))
    return result


def _tie_dict(dim: Dimension) -> dict[str, Any]:
    return {"field": dim.field, "kind": "tie", "target": dim.target, "factor": dim.factor}


def _trials(grid, experiment_path: str) -> list:
    """The trials as Tune saved them: after an interrupt, the in-memory ones read as terminated though
    the saved (and restored) state has them pending."""
    from ray.tune import ExperimentAnalysis

    quiet = logging.getLogger("ray.tune.analysis.experiment_analysis")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # "could not fetch metrics" for every trial that never reported
    try:
        trials = ExperimentAnalysis(experiment_path).trials
    except Exception as error:  # nothing saved yet
        analysis = getattr(grid, "_experiment_analysis", None) if grid is not None else None
        if analysis is None:
            log.warning("no trial state in %s (%s)", experiment_path, error)
            return []
        trials = analysis.trials
    finally:
        quiet.setLevel(level)
    return sorted(trials, key=lambda t: t.trial_id)


def _param_columns(spec: SweepSpec) -> list[str]:
    return [d.field for d in spec.dimensions if d.kind != "constant"]


def _short_error(trial) -> str | None:
    try:
        error = trial.get_pickled_error() or trial.get_error()
    except Exception:  # an unreadable error file
        error = None
    if error is None:
        return "failed (no error recorded)" if trial.status == "ERROR" else None
    text = str(error)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    # the user's exception is the last "Name: message" line of Ray's wrapped traceback
    for line in reversed(lines):
        if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Fault)\b.*:", line):
            return line[:500]
    return (lines[-1] if lines else type(error).__name__)[:500]


def _row(trial, spec: SweepSpec, base: dict[str, Any], output_dir: str) -> dict[str, Any]:
    last = dict(trial.last_result or {})
    params = {d.field: _plain(trial.config.get(d.field)) for d in spec.searched}
    params.update(tied_values(params, spec.ties, base))
    steps = last.get("step")
    trial_out = storage.join(output_dir, "trials", trial.trial_id)
    result_file = storage.join(trial_out, TRIAL_RESULT)
    finished = json.loads(storage.read_text(result_file)) if storage.is_file(result_file) else None
    if trial.status == "ERROR":
        status = "FAILED"
    elif trial.status == "TERMINATED":
        # train() returned (and wrote its result) or the scheduler stopped the trial before the end
        done = finished is not None or (steps is not None and steps >= int(_get(
            apply_params(base, params, []), "train_steps")))
        status = "FINISHED" if done else "EARLY_STOPPED"
    else:
        status = trial.status
    value = last.get(spec.metric)
    run_id = finished.get("mlflow_run_id") if finished else None
    seconds = last.get("time_total_s")
    return {
        "trial_id": trial.trial_id, "status": status,
        **{name: params.get(name) for name in _param_columns(spec)},
        spec.metric: float(value) if value is not None else None,
        "step": int(steps) if steps is not None else None,
        "time_s": round(float(seconds), 1) if seconds is not None else None,
        "error": _short_error(trial) if trial.status == "ERROR" else None,
        "output_dir": trial_out, "mlflow_run_id": run_id,
    }


def _best(rows: list[dict[str, Any]], spec: SweepSpec) -> dict[str, Any] | None:
    def usable(row: dict[str, Any], statuses: tuple[str, ...]) -> bool:
        value = row[spec.metric]
        return row["status"] in statuses and value is not None and math.isfinite(value)

    # Trials that trained to the end first: an early-stopped trial's last value is from fewer steps.
    candidates = [r for r in rows if usable(r, ("FINISHED",))] or [r for r in rows if usable(r, ("EARLY_STOPPED",))]
    if not candidates:
        return None
    pick = min if spec.mode == "min" else max
    return pick(candidates, key=lambda r: r[spec.metric])


def _show(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e-3 or abs(value) >= 1e4 else f"{value:.4f}".rstrip("0").rstrip(".")
    if isinstance(value, list):
        return " ".join(str(v) for v in value)
    return str(value)


def format_table(rows: list[dict[str, Any]], spec: SweepSpec, best_id: str | None = None) -> str:
    columns = ["trial_id", "status", *_param_columns(spec), spec.metric, "step", "time_s"]
    table = [[("* " if r["trial_id"] == best_id else "  ") + _show(r["trial_id"]),
              *[_show(r.get(c)) for c in columns[1:]]] for r in rows]
    header = ["  trial", "status", *_param_columns(spec), spec.metric, "step", "time (s)"]
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
        lines.append(f"  best config: {result.best_config_path} (ray-ltx train --config {result.best_config_path})")
    if result.parent_run_id:
        from ray_ltx import tracking

        lines.append(f"  MLflow sweep run: {result.parent_run_id} (nested runs: one per trial); "
                     f"mlflow ui --backend-store-uri {tracking.redact(result.tracking_uri or '')}")
    lines.append(f"  Tune state: {result.experiment_path} ({result.seconds:.0f} s)")
    return "\n".join(lines)


# -- MLflow: the parent run and its children -------------------------------------------------------


def _reopen_parent(uri: str, run_id: str) -> None:
    from ray_ltx import tracking

    mlflow_client = tracking.client(uri)
    mlflow_client.update_run(run_id, status="RUNNING")
    mlflow_client.set_tag(run_id, "run_status", "RUNNING")
    if "error" in mlflow_client.get_run(run_id).data.tags:
        mlflow_client.delete_tag(run_id, "error")
    # Runs of trials the stopped driver left behind end now; --resume restarts those trials in new runs.
    for child in _children(uri, run_id):
        if child.info.status == "RUNNING":
            tracking.end_run(uri, child.info.run_id, "KILLED", error="the sweep's driver stopped; trial restarted by --resume")


def _children(uri: str, parent_run_id: str) -> list:
    from ray_ltx import tracking

    mlflow_client = tracking.client(uri)
    run = mlflow_client.get_run(parent_run_id)
    return mlflow_client.search_runs([run.info.experiment_id],
                                     filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'",
                                     max_results=5000)


def _finish_children(uri: str, parent_run_id: str, rows: list[dict[str, Any]]) -> None:
    """Tag each trial's run with its Tune outcome; end the runs of trials Tune stopped (they could not)."""
    from ray_ltx import tracking

    mlflow_client = tracking.client(uri)
    by_name: dict[str, list] = {}
    for child in _children(uri, parent_run_id):
        by_name.setdefault(child.info.run_name or "", []).append(child)
    for row in rows:
        runs = sorted(by_name.get(f"trial-{row['trial_id']}", []), key=lambda r: r.info.start_time or 0)
        if not runs:
            continue
        if row["status"] not in ("FINISHED", "EARLY_STOPPED", "FAILED"):
            # the sweep was stopped under this trial (its run may have recorded the actor's death as a failure)
            for run in runs:
                if run.info.status in ("RUNNING", "FAILED"):
                    _mark_killed(mlflow_client, run, error="the sweep was stopped; --resume restarts this trial")
            continue
        latest = runs[-1]
        row["mlflow_run_id"] = row["mlflow_run_id"] or latest.info.run_id
        mlflow_client.set_tag(latest.info.run_id, "tune.trial_id", row["trial_id"])
        mlflow_client.set_tag(latest.info.run_id, "tune.status", row["status"])
        if row["status"] == "EARLY_STOPPED" and latest.info.status in ("RUNNING", "FAILED"):
            # The trial's train() may have seen the scheduler's stop as an error and ended its run FAILED.
            _mark_killed(mlflow_client, latest, stopped_early=f"stopped by the scheduler at step {row['step']}")
        elif latest.info.status == "RUNNING" and row["status"] in ("FAILED", "FINISHED"):
            tracking.end_run(uri, latest.info.run_id, "FAILED" if row["status"] == "FAILED" else "FINISHED",
                             error=row.get("error"))


def _mark_killed(mlflow_client, run, *, error: str | None = None, stopped_early: str | None = None) -> None:
    """End a trial's run KILLED, with why: ``error`` (the sweep stopped) or ``stopped_early`` (the scheduler)."""
    run_id = run.info.run_id
    if error:
        mlflow_client.set_tag(run_id, "error", error)
    elif "error" in run.data.tags:  # an error recorded by the trial for a stop that was no failure
        mlflow_client.delete_tag(run_id, "error")
    if stopped_early:
        mlflow_client.set_tag(run_id, "stopped_early", stopped_early)
    mlflow_client.set_tag(run_id, "run_status", "KILLED")
    mlflow_client.set_terminated(run_id, status="KILLED")


def _finish_parent(uri: str, run_id: str, spec: SweepSpec, rows: list[dict[str, Any]], best: dict[str, Any] | None,
                   best_params: dict[str, Any], best_path: str | None) -> None:
    from ray_ltx import tracking

    mlflow_client = tracking.client(uri)
    table = [{k: (json.dumps(v) if isinstance(v, list | dict) else v) for k, v in r.items()} for r in rows]
    tracking.log_table(uri, run_id, table, "sweep/trials.json")
    counts = {s: sum(r["status"] == s for r in rows) for s in ("FINISHED", "EARLY_STOPPED", "FAILED")}
    for status, count in counts.items():
        mlflow_client.set_tag(run_id, f"trials_{status.lower()}", str(count))
    if best is None:
        tracking.end_run(uri, run_id, "FAILED", error=f"no trial reported {spec.metric}")
        return
    mlflow_client.set_tag(run_id, "best_trial_id", best["trial_id"])
    mlflow_client.set_tag(run_id, "best_run_id", best.get("mlflow_run_id") or "")
    mlflow_client.set_tag(run_id, f"best_{spec.metric}", f"{best[spec.metric]:.6g}")
    for name, value in best_params.items():
        mlflow_client.set_tag(run_id, f"best.{name}", _show(value) if not isinstance(value, float) else repr(value))
    mlflow_client.log_metric(run_id, f"best_{spec.metric}", float(best[spec.metric]))
    if best_path and not storage.is_uri(best_path):
        tracking.log_artifacts(uri, run_id, {"sweep": best_path})
    if spec.source and Path(spec.source).is_file():
        tracking.log_artifacts(uri, run_id, {"sweep": spec.source})
    tracking.end_run(uri, run_id, "FINISHED")
