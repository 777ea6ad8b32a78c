"""The sweep file: which config fields a sweep varies and how, the metric, the search and the scheduler.

``ray-ltx tune --config base.yaml --sweep FILE`` reads a YAML file like::

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

Distributions: ``choice``, ``grid_search`` (alias ``grid``), ``uniform``, ``loguniform``, ``quniform``,
``qloguniform`` (float fields), ``randint``, ``lograndint``, ``qrandint`` (int fields), ``tie``; a plain
value is a constant for every trial.

:class:`SweepSpec` is that file as pydantic models: its shape is checked on loading, and the values
against the training config by :func:`prepare` before anything starts. :func:`apply_params` turns a
trial's values into its config.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import types
import typing
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from ray_ltx import storage
from ray_ltx.config import FIELD_SECTION, SECTIONS, Config, build_config, load_yaml, suggest
from ray_ltx.errors import ConfigError

#: what the training workers report (ray_ltx.train.loop), so what a sweep can optimise
REPORTED_METRICS = ("val_loss", "loss", "grad_norm", "lr", "step_time_s", "samples_per_s", "tokens_per_s",
                    "epoch", "skipped_steps", "gpu_memory_allocated_gib", "gpu_memory_reserved_gib")
VALUE_LISTS = ("choice", "grid_search")
FLOAT_RANGES = ("uniform", "loguniform", "quniform", "qloguniform")
INT_RANGES = ("randint", "lograndint", "qrandint")
DISTRIBUTIONS = (*VALUE_LISTS, *FLOAT_RANGES, *INT_RANGES, "tie")
ALIASES = {"grid": "grid_search"}
_LOG_RANGES = ("loguniform", "qloguniform", "lograndint")
_QUANTIZED = ("quniform", "qloguniform", "qrandint")
_INT_RANGE_FOR = {"uniform": "randint", "loguniform": "lograndint", "quniform": "qrandint", "qloguniform": "qrandint"}

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
_SPACE_EXAMPLE = "e.g.\n  space:\n    rank: {choice: [16, 32, 64, 128]}\n    lr: {loguniform: [1.0e-5, 3.0e-4]}"


def did_you_mean(name: str, candidates: typing.Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for a typo, or when ``name`` starts a candidate (``grace`` -> ``grace_period``)."""
    candidates = list(candidates)
    prefixed = [c for c in candidates if len(name) >= 3 and c.startswith(name)]
    return f" (did you mean '{prefixed[0]}'?)" if prefixed else suggest(name, candidates)


def _listing(options: typing.Iterable[str]) -> str:
    *rest, last = options
    return f"{', '.join(rest)} or {last}" if rest else last


# -- value types, with the messages users see -------------------------------------------------------


def _number(value: Any) -> float:
    """A finite number. YAML 1.1 reads ``1e-4`` (no dot) as text: such text counts as the number it means."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"expected a number, got {value!r}")
    return float(value)


def _whole_number(minimum: int | None = None) -> BeforeValidator:
    wanted = "a whole number" + (f" >= {minimum}" if minimum is not None else "")

    def check(value: Any) -> int:
        try:
            number = _number(value)
        except ValueError:
            number = math.nan
        if not number.is_integer() or (minimum is not None and number < minimum):
            raise ValueError(f"expected {wanted}, got {value!r}")
        return int(number)

    return BeforeValidator(check)


def _one_of(options: tuple[str, ...], what: str) -> BeforeValidator:
    def check(value: Any) -> str:
        text = str(value).lower()
        if text not in options:
            raise ValueError(f"unknown {what} '{value}'{did_you_mean(text, options)}; expected {_listing(options)}")
        return text

    return BeforeValidator(check)


def _above_one(value: Any) -> float:
    number = _number(value)
    if number <= 1:
        raise ValueError(f"expected a number > 1, got {value!r}")
    return number


Count = Annotated[int, _whole_number(1)]


# -- the sweep file ------------------------------------------------------------------------------------


class _Named(BaseModel):
    """A setting given by name (``scheduler: asha``) or as a mapping with ``type`` and options."""

    model_config = ConfigDict(extra="forbid")
    KIND: ClassVar[str]
    OPTIONS: ClassVar[dict[str, tuple[str, ...]]]  # type -> the options it takes
    ALIASES: ClassVar[dict[str, str]] = {}

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = {"type": value}
        if not isinstance(value, dict):
            raise ValueError(f"expected a name or a mapping with 'type', got {value!r}")
        options = dict(value)
        kind = str(options.pop("type", cls.model_fields["type"].default)).lower()
        kind = cls.ALIASES.get(kind, kind)
        if kind not in cls.OPTIONS:
            names = (*cls.OPTIONS, *cls.ALIASES)
            raise ValueError(f"unknown {cls.KIND} '{kind}'{did_you_mean(kind, names)}; expected {_listing(names)}")
        for option in options:
            allowed = cls.OPTIONS[kind]
            if option not in allowed:
                raise ValueError(f"unknown option '{option}' for {kind}{did_you_mean(str(option), allowed)} "
                                 f"(options: {', '.join(allowed) or 'none'})")
        return {"type": kind, **options}


class SearchAlg(_Named):
    """How trials get their values: random sampling, every combination of a grid, or Optuna (TPE)."""

    KIND = "search_alg"
    OPTIONS = {"random": ("seed",), "grid": (), "optuna": ("seed",)}
    type: Literal["random", "grid", "optuna"] = "random"
    seed: Annotated[int, _whole_number()] | None = None
    """Seed of the random sampling or of Optuna's sampler."""


class Scheduler(_Named):
    """Early stopping: ASHA stops the trials that trail their rung; none (or fifo) trains every trial to the end."""

    KIND = "scheduler"
    OPTIONS = {"asha": ("time_attr", "grace_period", "reduction_factor", "max_t", "brackets"), "none": ()}
    ALIASES = {"fifo": "none"}
    type: Literal["asha", "none"] = "asha"
    time_attr: Annotated[str, _one_of(("step", "training_iteration", "time_total_s"), "time_attr")] = "step"
    """What rungs count: optimizer steps, worker reports, or seconds."""
    grace_period: Count | None = None
    """No trial is stopped before this; default: the first validation (step) or 1."""
    reduction_factor: Annotated[float, BeforeValidator(_above_one)] = 3.0
    """Each rung keeps the best 1/reduction_factor of the trials that reach it."""
    max_t: Count | None = None
    """Where the rungs end; default: train_steps (step) or 100."""
    brackets: Count = 1


class Dimension(BaseModel):
    """One entry of ``space``: how one config field varies across trials."""

    field: str = ""
    """The flat config field name (set from the entry's key)."""
    kind: str
    """constant, tie, or one of DISTRIBUTIONS."""
    values: list[Any] = Field(default_factory=list)
    """choice/grid_search values, or range arguments ([low, high] or [low, high, q])."""
    value: Any = None
    """A constant's value."""
    target: str | None = None
    """The field a tie follows."""
    factor: float = 1.0
    """A tie's factor."""

    @property
    def searched(self) -> bool:
        return self.kind not in ("constant", "tie")

    def describe(self) -> str:
        if self.kind == "constant":
            return json.dumps(self.value)
        if self.kind == "tie":
            return f"tie {self.target}" + (f" x {self.factor:g}" if self.factor != 1 else "")
        return f"{self.kind} {json.dumps(self.values)}"


def _parse_entry(entry: Any) -> Dimension:
    """A ``space`` entry as written (``{loguniform: [1.0e-5, 3.0e-4]}``, ``{tie: rank}``, a constant).

    Only its shape is checked here; what depends on the field (its type, whether it may vary) is
    checked by :class:`SweepSpec`, which knows the entry's key.
    """
    if not isinstance(entry, dict):
        return Dimension(kind="constant", value=entry)
    keys = [ALIASES.get(str(k), str(k)) for k in entry]
    kinds = [k for k in keys if k in DISTRIBUTIONS]
    extra = [k for k in keys if k not in DISTRIBUTIONS and not (k == "factor" and "tie" in keys)]
    if extra or len(kinds) != 1:
        bad = extra[0] if extra else ", ".join(keys) or "{}"
        hint = did_you_mean(extra[0], DISTRIBUTIONS) if extra else ""
        raise ValueError(f"unknown distribution '{bad}'{hint}; use one of {', '.join(DISTRIBUTIONS)} "
                         "(e.g. {loguniform: [1.0e-5, 3.0e-4]})")
    kind = kinds[0]
    raw = next(v for k, v in entry.items() if ALIASES.get(str(k), str(k)) == kind)
    if kind == "tie":
        return Dimension(kind="tie", target=str(raw), factor=_number(entry.get("factor", 1.0)))
    if not isinstance(raw, list) or not raw:
        example = "{choice: [16, 32, 64]}" if kind in VALUE_LISTS else f"{{{kind}: [low, high]}}"
        raise ValueError(f"{kind} takes a non-empty list, e.g. {example}")
    if kind in VALUE_LISTS:
        return Dimension(kind=kind, values=list(raw))
    quantized = kind in _QUANTIZED
    if len(raw) != (3 if quantized else 2):
        raise ValueError(f"{kind} takes {'[low, high, q]' if quantized else '[low, high]'}, got {raw!r}")
    values: list[float | int] = [_number(v) for v in raw]
    if kind in INT_RANGES:
        if not all(float(v).is_integer() for v in values):
            raise ValueError(f"{kind} takes whole numbers, got {raw!r}")
        values = [int(v) for v in values]
    if not values[0] < values[1]:
        raise ValueError(f"{kind} needs low < high, got {raw!r}")
    if kind in _LOG_RANGES and values[0] <= 0:
        raise ValueError(f"{kind} needs low > 0 (a log scale), got {raw!r}")
    if quantized and values[2] <= 0:
        raise ValueError(f"{kind} needs q > 0, got {raw!r}")
    return Dimension(kind=kind, values=values)


class SweepSpec(BaseModel):
    """A checked sweep file (see the module docstring for its layout)."""

    model_config = ConfigDict(extra="forbid")

    name: str = "sweep"
    """The Tune experiment's name: a directory under <output_dir>/tune (default: the file's stem)."""
    description: str = ""
    metric: Annotated[str, _one_of(REPORTED_METRICS, "metric")] = "val_loss"
    """What the trials are compared on: a metric the workers report (val_loss needs --holdout_samples)."""
    mode: Annotated[Literal["min", "max"], _one_of(("min", "max"), "mode")] = "min"
    num_samples: Count | None = None
    """Trials (with grid_search: repeats of the whole grid); default: 1 for a grid, else 10."""
    max_concurrent_trials: Count | None = None
    """Trials at once; default: the cluster's GPUs // the GPUs of one trial (1 on CPU-only clusters)."""
    search_alg: SearchAlg = Field(default_factory=SearchAlg)
    scheduler: Scheduler = Field(default_factory=Scheduler)
    config: dict[str, Any] = Field(default_factory=dict)
    """Settings fixed for every trial, over --config and flags."""
    space: dict[str, Annotated[Dimension, BeforeValidator(_parse_entry)]] = Field(default_factory=dict,
                                                                                  validate_default=True)
    """Config fields (flat names, or section.field) and how each varies."""

    _source: str = PrivateAttr("sweep")
    _raw: dict[str, Any] = PrivateAttr(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            raise ValueError(f"a sweep file must be a mapping with 'space', 'metric', ..., got {type(data).__name__}")
        for key in data:
            if key not in cls.model_fields:
                raise ValueError(f"unknown sweep setting '{key}'{did_you_mean(str(key), cls.model_fields)}; "
                                 f"valid: {', '.join(cls.model_fields)}")
        return {key: value for key, value in data.items() if value is not None}  # `key:` alone means the default

    @field_validator("name")
    @classmethod
    def _directory_name(cls, name: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
            raise ValueError(f"{name!r} must be letters, digits, '_', '-' or '.' (it names a directory)")
        return name

    @field_validator("space", mode="before")
    @classmethod
    def _space_is_a_mapping(cls, space: Any) -> Any:
        if not isinstance(space, dict) or not space:
            raise ValueError(f"expected a mapping of config fields to distributions, {_SPACE_EXAMPLE}")
        return space

    @field_validator("config")
    @classmethod
    def _no_output_dir(cls, config: dict[str, Any]) -> dict[str, Any]:
        if "output_dir" in config:
            raise ValueError("output_dir: the sweep's output directory comes from --output_dir (or --config), "
                             "not from the sweep file")
        return config

    @model_validator(mode="after")
    def _check_fields(self) -> SweepSpec:
        seen: set[str] = set()
        for key, dim in self.space.items():
            dim.field = _field_name(key, "space")
            if dim.field in seen:
                raise ValueError(f"space: '{dim.field}' is given twice")
            seen.add(dim.field)
            _check_variable(dim)
        by_field = {d.field: d for d in self.dimensions}
        for dim in self.ties:
            dim.target = _field_name(dim.target or "", f"space.{dim.field}: tie")
            if dim.target == dim.field:
                raise ValueError(f"space.{dim.field}: a field cannot be tied to itself")
            followed = by_field.get(dim.target)
            if followed is not None and followed.kind == "tie":
                raise ValueError(f"space.{dim.field}: tied to '{dim.target}', which is itself tied; "
                                 f"tie it to '{followed.target}' directly")
        if not self.searched:
            raise ValueError("space: nothing to search; give at least one field a distribution "
                             "(choice, grid_search, loguniform, ...)")
        self._check_search_alg()
        if self.num_samples is None:
            self.num_samples = 1 if all(d.kind == "grid_search" for d in self.searched) else 10
        return self

    def _check_search_alg(self) -> None:
        if self.search_alg.type == "grid":
            for dim in self.searched:
                if dim.kind not in VALUE_LISTS:
                    raise ValueError(f"space.{dim.field}: search_alg grid needs finite values (choice or grid_search), "
                                     f"not {dim.kind}; use search_alg random or optuna")
                dim.kind = "grid_search"
        elif self.search_alg.type == "optuna":
            for dim in self.searched:
                if dim.kind == "grid_search":
                    raise ValueError(f"space.{dim.field}: optuna samples its trials; use choice instead of "
                                     "grid_search (or search_alg grid)")
                if dim.kind == "choice" and any(isinstance(v, list | dict) for v in dim.values):
                    raise ValueError(f"space.{dim.field}: optuna chooses among scalar values only; "
                                     "use search_alg random for lists")

    # -- views ----------------------------------------------------------------------------------

    @property
    def source(self) -> str:
        """Where the sweep came from (its file), for messages."""
        return self._source

    @property
    def raw(self) -> dict[str, Any]:
        """The sweep file's content as written."""
        return self._raw

    @property
    def dimensions(self) -> list[Dimension]:
        return list(self.space.values())

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
        return (self.num_samples or 1) * grid


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
            annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
        else:
            return origin or annotation


def _field_name(key: str, where: str) -> str:
    """A flat field name (``lr``) or ``section.field`` (``optimizer.lr``) as the flat name."""
    section, _, leaf = key.rpartition(".")
    if section and section in SECTIONS and leaf in SECTIONS[section].model_fields:
        return leaf
    if key in FIELD_SECTION:
        return key
    raise ValueError(f"{where}: unknown config field '{key}'{did_you_mean(key, FIELD_SECTION)}; "
                     "run `ray-ltx train --help` for the valid names")


def _check_variable(dim: Dimension) -> None:
    """Whether the field may vary across trials, and whether its entry fits the field's type."""
    name, where = dim.field, f"space.{dim.field}"
    if name in _NEVER_SEARCHED:
        raise ValueError(f"space: '{name}' cannot be swept: {_NEVER_SEARCHED[name]}")
    section = FIELD_SECTION[name]
    if section in _FIXED_SECTIONS:
        raise ValueError(f"space: '{name}' cannot be swept: {_FIXED_SECTIONS[section]}")
    if section in _VARIABLE_IN_FIXED_SECTIONS and name not in _VARIABLE_IN_FIXED_SECTIONS[section]:
        raise ValueError(f"space: '{name}' cannot be swept: {_FIXED_REASONS[section]}")
    kind_of = _field_type(name)
    if dim.kind == "constant" and isinstance(dim.value, list) and kind_of is not list:
        values = json.dumps(dim.value)
        raise ValueError(f"{where}: a list is not a search space for '{name}'; write {{choice: {values}}} "
                         f"or {{grid_search: {values}}}")
    if dim.kind in FLOAT_RANGES + INT_RANGES and kind_of not in (int, float):
        raise ValueError(f"{where}: {dim.kind} needs a numeric field, but '{name}' is not a number; "
                         "use choice or grid_search")
    if dim.kind in FLOAT_RANGES and kind_of is int:
        raise ValueError(f"{where}: '{name}' takes whole numbers; use {_INT_RANGE_FOR[dim.kind]} or choice "
                         f"instead of {dim.kind}")


def _format_errors(error: ValidationError, source: str) -> str:
    lines = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] != "value_error":  # pydantic's own messages do not show the value
            message += f" (got {item['input']!r})"
        lines.append(f"{where}: {message}" if where else message)
    return f"{source}: {lines[0]}" if len(lines) == 1 else f"{source}:\n" + "\n".join(f"  {line}" for line in lines)


def parse_sweep(data: Any, source: str, name: str | None = None) -> SweepSpec:
    """Check a sweep mapping (a sweep file's content); ``name`` is the default of its ``name:``."""
    content = {**data, "name": data.get("name") or name} if isinstance(data, dict) and name else data
    try:
        spec = SweepSpec.model_validate(content)
    except ValidationError as error:
        raise ConfigError(_format_errors(error, source)) from None
    spec._source = source
    spec._raw = copy.deepcopy(data)
    return spec


def load_sweep(path: str | os.PathLike[str]) -> SweepSpec:
    """Read and check a sweep file (its shape; the values are checked against a config by :func:`prepare`)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep file {path} does not exist; pass an existing YAML file to --sweep (see tuning/)")
    return parse_sweep(load_yaml(path), str(path), name=path.stem)


# -- the sweep's base config, and each trial's values on top of it --------------------------------


def plain(value: Any) -> Any:
    """numpy scalars (Tune samples them) as Python values."""
    if hasattr(value, "item") and callable(value.item) and not isinstance(value, list | dict | str):
        try:
            return value.item()
        except (TypeError, ValueError):
            return value
    if isinstance(value, tuple):
        return [plain(v) for v in value]
    return value


def _set(data: dict[str, Any], name: str, value: Any) -> None:
    section = FIELD_SECTION[name]
    if section is None:
        data[name] = value
    else:
        data.setdefault(section, {})[name] = value


def get_value(data: dict[str, Any], name: str) -> Any:
    """A field of a config dict, by its flat name."""
    section = FIELD_SECTION[name]
    return data[name] if section is None else data.get(section, {}).get(name)


def apply_params(base: dict[str, Any], params: dict[str, Any], ties: list[Dimension]) -> dict[str, Any]:
    """The config dict of a trial: base < searched values < tied values."""
    data = copy.deepcopy(base)
    for name, value in params.items():
        _set(data, name, plain(value))
    for tie in ties:
        value = get_value(data, tie.target or "")
        if tie.factor != 1:
            value = value * tie.factor
        if _field_type(tie.field) is int and isinstance(value, float) and value.is_integer():
            value = int(value)
        _set(data, tie.field, value)
    return data


def tied_values(params: dict[str, Any], ties: list[Dimension], base: dict[str, Any]) -> dict[str, Any]:
    data = apply_params(base, params, ties)
    return {tie.field: get_value(data, tie.field) for tie in ties}


def base_config(config: Config, spec: SweepSpec) -> dict[str, Any]:
    """The config every trial starts from (resolved, as a dict): --config and flags < the sweep's config: and
    its constants."""
    resolved = build_config(config.to_dict(), spec.config, spec.constants,
                            source=f"{spec.source} (--config, the sweep's config and constants)").resolved()
    base = resolved.to_dict()
    base["data"]["cache_dir"] = storage.absolute(resolved.cache_dir)
    return base


def prepare(config: Config, spec: SweepSpec) -> dict[str, Any]:
    """The sweep's base config after checking every searched value against it (values are stored as the config
    reads them, e.g. "1e-4" -> 0.0001)."""
    base = base_config(config, spec)
    if spec.metric == "val_loss" and not base["data"]["holdout_samples"]:
        raise ConfigError(f"{spec.source}: metric val_loss is the loss on held-out samples, but --holdout_samples "
                          "is 0; pass --holdout_samples N (e.g. 2) or set `metric: loss` in the sweep file")
    for dim in spec.searched:
        if dim.kind in VALUE_LISTS:
            dim.values = [_check_value(base, dim.field, value, spec) for value in dim.values]
            if len({json.dumps(v, sort_keys=True) for v in dim.values}) != len(dim.values):
                raise ConfigError(f"{spec.source}: space.{dim.field}: {dim.kind} lists the same value twice: "
                                  f"{dim.values!r}")
        else:
            for bound in dim.values[:2]:
                _check_value(base, dim.field, bound, spec)
    return base


def _check_value(base: dict[str, Any], name: str, value: Any, spec: SweepSpec) -> Any:
    """The value as the config reads it, or a ConfigError naming the sweep entry."""
    where = f"{spec.source} (space.{name} = {value!r})"
    try:
        data = apply_params(base, {name: value}, spec.ties)
    except TypeError as error:
        raise ConfigError(f"{where}: a tie cannot scale this value ({error})") from None
    return get_value(build_config(data, source=where).to_dict(), name)
