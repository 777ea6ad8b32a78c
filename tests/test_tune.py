"""Ray Tune sweeps (ray_ltx.tune): a rank x lr grid, ASHA early stopping, a failing trial, resume.

The slow tests run the real stack on the tiny model: Tune trials, each a full ray-ltx training
(its own TorchTrainer with one gloo worker), a real MLflow store. The sweep-file checks, the ASHA
final-report rule and the credential masking of the sweep's files are fast.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from ray_ltx.config import Config, build_config, load_config
from ray_ltx.errors import ConfigError, OutputDirError
from ray_ltx.tune import load_sweep, parse_sweep, prepare, run_sweep
from ray_ltx.tune.report import write_best_config
from ray_ltx.tune.runner import FinalStepASHA, SweepState

REPO = Path(__file__).resolve().parents[1]
GRID = REPO / "tuning" / "rank_lr_grid.yaml"
ASHA_OPTUNA = REPO / "tuning" / "asha_optuna.yaml"


# -- helpers -------------------------------------------------------------------------------------


def write_sweep(path: Path, sweep: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    return path


@pytest.fixture
def sweep_config(make_config, tmp_path: Path):
    """A base config for sweeps: tiny model, shared cache, 1 worker, a held-out sample, MLflow in tmp_path
    (output_dir: tmp_path/out, from make_config)."""

    def make(**overrides: Any) -> Config:
        values = {"num_workers": 1, "holdout_samples": 1, "report_to": "mlflow",
                  "mlflow_tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}
        values.update(overrides)
        return make_config(**values)

    return make


def mlflow_runs(uri: str) -> tuple[Any, list[Any]]:
    """(the sweep's parent run, its child runs) in the ray-ltx experiment."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("ray-ltx")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("ray_ltx.kind") == "sweep"]
    assert len(parents) == 1, [r.info.run_name for r in runs]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    return parents[0], children


# -- the sweep file (fast) -----------------------------------------------------------------------


def test_shipped_sweep_files_parse() -> None:
    grid = load_sweep(GRID)
    assert (grid.name, grid.search_alg.type, grid.scheduler.type, grid.expected_trials()) == ("rank_lr_grid", "grid", "none", 4)
    assert {d.field: d.kind for d in grid.dimensions} == {"rank": "grid_search", "lora_alpha": "tie", "lr": "grid_search"}
    search = load_sweep(ASHA_OPTUNA)
    assert (search.search_alg.type, search.scheduler.type, search.metric, search.mode) == ("optuna", "asha", "val_loss", "min")
    assert (search.search_alg.seed, search.scheduler.grace_period, search.num_samples) == (0, 50, 16)
    lr = next(d for d in search.dimensions if d.field == "lr")
    assert (lr.kind, lr.values) == ("loguniform", [1e-5, 3e-4])


@pytest.mark.parametrize(("space", "message"), [
    ({"rnak": {"choice": [8, 16]}}, "unknown config field 'rnak' (did you mean 'rank'?)"),
    ({"lr": {"logunifrom": [1e-5, 1e-3]}}, "unknown distribution 'logunifrom' (did you mean 'loguniform'?)"),
    ({"lr": {"loguniform": [0, 1e-3]}}, "loguniform needs low > 0"),
    ({"lr": {"uniform": [1e-3, 1e-5]}}, "needs low < high"),
    ({"lr": {"loguniform": [1e-5]}}, "loguniform takes [low, high]"),
    ({"lr": {"loguniform": ["small", 1e-3]}}, "expected a number, got 'small'"),
    ({"rank": {"loguniform": [8, 128]}}, "'rank' takes whole numbers; use lograndint"),
    ({"target_modules": {"uniform": [0, 1]}}, "needs a numeric field"),
    ({"rank": [8, 16]}, "write {choice: [8, 16]}"),
    ({"rank": {"choice": []}}, "choice takes a non-empty list"),
    ({"video_resolution_buckets": {"choice": ["9x64x96"]}}, "changes the latent cache"),
    ({"lora_alpha": {"tie": "rank"}}, "nothing to search"),
    ({"rank": {"choice": [8]}, "lora_alpha": {"tie": "rnak"}}, "did you mean 'rank'?"),
])
def test_bad_space_is_a_clear_config_error(space: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_sweep({"space": space}, "sweep.yaml")
    assert message in str(error.value)
    assert "sweep.yaml" in str(error.value)


@pytest.mark.parametrize(("sweep", "message"), [
    ({"metirc": "val_loss"}, "unknown sweep setting 'metirc' (did you mean 'metric'?)"),
    ({"metric": "val_los"}, "did you mean 'val_loss'?"),
    ({"mode": "lowest"}, "expected min or max"),
    ({"scheduler": "hyperband"}, "unknown scheduler 'hyperband'"),
    ({"scheduler": {"type": "asha", "grace": 1}}, "unknown option 'grace' for asha (did you mean 'grace_period'?)"),
    ({"search_alg": "bayes"}, "unknown search_alg 'bayes'"),
    ({"search_alg": "optuna", "space": {"rank": {"grid_search": [8, 16]}}}, "use choice instead of grid_search"),
    ({"search_alg": "grid", "space": {"lr": {"loguniform": [1e-5, 1e-3]}}}, "search_alg grid needs finite values"),
    ({"num_samples": 0}, "num_samples: expected a whole number >= 1"),
    ({"search_alg": {"type": "grid", "seed": 1}}, "unknown option 'seed' for grid"),
    ({"scheduler": {"type": "asha", "reduction_factor": 1}}, "scheduler.reduction_factor: expected a number > 1"),
    ({"config": {"output_dir": "/elsewhere"}}, "config: output_dir: the sweep's output directory comes from"),
])
def test_bad_sweep_settings_are_clear_config_errors(sweep: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match="sweep.yaml") as error:
        parse_sweep({"space": {"rank": {"choice": [8, 16]}}, **sweep}, "sweep.yaml")
    assert message in str(error.value)


def test_values_are_checked_against_the_config() -> None:
    base = build_config({"holdout_samples": 1})
    spec = parse_sweep({"space": {"rank": {"grid_search": [8, 0]}}}, "sweep.yaml")
    with pytest.raises(ConfigError, match=r"space\.rank = 0"):
        prepare(base, spec)
    spec = parse_sweep({"space": {"lr": {"choice": ["1e-4", "3e-4"]}}}, "sweep.yaml")  # YAML 1.1 reads 1e-4 as text
    prepare(base, spec)
    assert spec.dimensions[0].values == [1e-4, 3e-4]
    spec = parse_sweep({"space": {"lr": {"choice": [1e-4, 3e-4]}}}, "sweep.yaml")
    with pytest.raises(ConfigError, match="--holdout_samples is 0"):
        prepare(build_config({}), spec)


def test_every_bad_setting_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as error:
        parse_sweep({"mode": "lowest", "num_samples": 0, "space": {"rank": {"choice": [8]}}}, "sweep.yaml")
    assert "mode: unknown mode 'lowest'" in str(error.value) and "num_samples: expected" in str(error.value)


def test_asha_keeps_a_trials_final_report() -> None:
    """Plain ASHA stops a trial at max_t or when its last step trails a rung, before its training writes the
    weights; the sweep's ASHA lets a final report through and still stops trailing trials earlier."""
    from types import SimpleNamespace

    from ray.tune.schedulers import ASHAScheduler, TrialScheduler

    settings = {"time_attr": "step", "metric": "val_loss", "mode": "min", "max_t": 4, "grace_period": 1,
                "reduction_factor": 2}
    leader, trailing, short = (SimpleNamespace(trial_id=name, config=config) for name, config in
                               (("leader", {}), ("trailing", {}), ("short", {"train_steps": 2})))
    reports = [(leader, 1, 1.0), (trailing, 1, 2.0), (leader, 2, 0.9), (short, 1, 0.5), (short, 2, 5.0),
               (leader, 4, 0.8)]
    decisions = {}
    for name, scheduler in (("plain", ASHAScheduler(**settings)), ("sweep", FinalStepASHA(train_steps=4, **settings))):
        for trial in (leader, trailing, short):
            scheduler.on_trial_add(None, trial)
        decisions[name] = [scheduler.on_trial_result(None, trial, {"step": step, "val_loss": value})
                           for trial, step, value in reports]
    stop, go = TrialScheduler.STOP, TrialScheduler.CONTINUE
    assert decisions["plain"] == [go, stop, go, go, stop, stop]
    assert decisions["sweep"] == [go, stop, go, go, go, go]  # the short trial's step 2 and the leader's 4 are final


def test_sweep_files_hold_no_credentials(tmp_path: Path) -> None:
    """The sweep's state and best_config.yaml mask credentials; --resume takes them again from its config."""
    tracking_uri, cache_dir = "https://user:secret@mlflow.example.com", "s3://KEY:SECRET@bucket/cache"
    values = {"holdout_samples": 1, "output_dir": str(tmp_path / "out"), "mlflow_tracking_uri": tracking_uri,
              "cache_dir": cache_dir}
    config = build_config(values)
    spec = load_sweep(GRID)
    base = prepare(config, spec)
    state_path = str(tmp_path / "out" / "tune" / "rank_lr_grid" / "ray_ltx_sweep.json")
    SweepState(spec.raw, base, "parent-run").save(state_path, tracking_uri=tracking_uri, sweep_file=str(GRID))
    best = {"trial_id": "t1", "rank": 8, "lora_alpha": 8, "lr": 1e-4, "val_loss": 0.5}
    best_path = write_best_config(best, spec, base, str(tmp_path / "out"))

    written = {path: path.read_text() for path in tmp_path.rglob("*") if path.is_file()}
    assert set(written) == {Path(state_path), Path(best_path)}
    for text in written.values():
        assert "secret" not in text.lower(), text
        assert "s3://***@bucket/cache" in text
    assert "https://***@mlflow.example.com" in written[Path(state_path)]
    assert "credentials are masked" in written[Path(best_path)]
    assert load_config(best_path).optimizer.lr == 1e-4

    resumed = SweepState.load(state_path, config, spec)  # --resume with the same config: the real values again
    assert Config.from_dict(resumed.base).tracking_uri == tracking_uri
    assert resumed.base["data"]["cache_dir"] == cache_dir and resumed.parent_run_id == "parent-run"
    without = build_config({**values, "mlflow_tracking_uri": "http://127.0.0.1:5000"})
    with pytest.raises(ConfigError, match=r"tracking\.mlflow_tracking_uri was saved with its credentials masked"):
        SweepState.load(state_path, without, spec)


# -- real sweeps (slow) --------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_rank_lr_grid(sweep_config) -> None:
    """The shipped 4-trial grid: distinct params, the best config is the argmin, MLflow parent + 4 children."""
    config = sweep_config(train_steps=4, checkpointing_steps=2)
    result = run_sweep(config, GRID)

    assert len(result.trials) == 4
    assert {t["status"] for t in result.trials} == {"FINISHED"}
    assert {(t["rank"], t["lr"]) for t in result.trials} == {(8, 1e-4), (8, 1e-3), (16, 1e-4), (16, 1e-3)}
    assert all(t["lora_alpha"] == t["rank"] for t in result.trials)
    assert all(t["step"] == 4 and t["val_loss"] is not None for t in result.trials)

    best = min(result.trials, key=lambda t: t["val_loss"])
    assert result.best_trial_id == best["trial_id"]
    assert result.best_config_path == str(Path(config.output_dir) / "best_config.yaml")
    chosen = load_config(result.best_config_path)  # ready to train as is
    assert (chosen.training.rank, chosen.training.lora_alpha, chosen.optimizer.lr) == (best["rank"], best["rank"], best["lr"])
    assert chosen.data.cache_dir == config.data.cache_dir
    assert chosen.output_dir == str(Path(config.output_dir) / "best")

    for trial in result.trials:  # each trial trained into its own output_dir
        assert (Path(trial["output_dir"]) / "pytorch_lora_weights.safetensors").is_file()

    parent, children = mlflow_runs(config.tracking.mlflow_tracking_uri)
    assert parent.info.run_name == "rank_lr_grid" and parent.info.run_id == result.parent_run_id
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["best_trial_id"] == best["trial_id"]
    assert float(parent.data.tags["best.lr"]) == best["lr"] and parent.data.tags["best.rank"] == str(best["rank"])
    assert len(children) == 4 and {c.info.status for c in children} == {"FINISHED"}
    by_name = {c.info.run_name: c for c in children}
    for trial in result.trials:
        child = by_name[f"trial-{trial['trial_id']}"]
        assert child.data.params["training.rank"] == str(trial["rank"])
        assert child.data.metrics["val_loss"] == pytest.approx(trial["val_loss"])
    from mlflow.tracking import MlflowClient

    artifacts = {a.path for a in MlflowClient(config.tracking.mlflow_tracking_uri).list_artifacts(parent.info.run_id, "sweep")}
    assert {"sweep/trials.json", "sweep/best_config.yaml"} <= artifacts


@pytest.mark.full
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_asha_stops_a_trial_early(sweep_config, tmp_path: Path) -> None:
    """val_loss every step, grace period 1: the trial with a far too high lr is cut at an early rung."""
    config = sweep_config(train_steps=6, checkpointing_steps=6, validation_loss_steps=1)
    sweep = write_sweep(tmp_path / "asha.yaml", {
        "name": "asha", "search_alg": "grid", "max_concurrent_trials": 2,
        "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
        "space": {"lr": {"grid_search": [1.0e-6, 2.0e-6, 3.0e-6, 0.5]}},  # the last runs last
    })
    result = run_sweep(config, sweep)

    statuses = {t["trial_id"]: t["status"] for t in result.trials}
    stopped = [t for t in result.trials if t["status"] == "EARLY_STOPPED"]
    assert stopped, result.trials
    assert all(t["step"] < 6 for t in stopped)
    assert "FAILED" not in statuses.values()
    best = next(t for t in result.trials if t["trial_id"] == result.best_trial_id)
    assert best["status"] == "FINISHED" and best["step"] == 6
    _, children = mlflow_runs(config.tracking.mlflow_tracking_uri)
    assert len(children) == 4
    for child in children:  # stopped trials' runs are closed too, not left RUNNING
        trial_id = child.info.run_name.removeprefix("trial-")
        assert child.info.status == ("KILLED" if statuses[trial_id] == "EARLY_STOPPED" else "FINISHED")


@pytest.mark.full
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_failed_trial_is_recorded_and_the_sweep_goes_on(sweep_config, tmp_path: Path) -> None:
    config = sweep_config(train_steps=2, checkpointing_steps=2)
    sweep = write_sweep(tmp_path / "modules.yaml", {
        "name": "modules", "search_alg": "grid", "scheduler": "none", "max_concurrent_trials": 2,
        "space": {"target_modules": {"grid_search": [["to_q", "to_v"], ["nonexistent"]]}},
    })
    result = run_sweep(config, sweep)

    by_modules = {tuple(t["target_modules"]): t for t in result.trials}
    failed, finished = by_modules[("nonexistent",)], by_modules[("to_q", "to_v")]
    assert failed["status"] == "FAILED" and "nonexistent" in failed["error"]
    assert finished["status"] == "FINISHED"
    assert result.best_trial_id == finished["trial_id"]
    assert load_config(result.best_config_path).training.target_modules == ["to_q", "to_v"]
    _, children = mlflow_runs(config.tracking.mlflow_tracking_uri)
    status = {c.info.run_name: c.info.status for c in children}
    assert status == {f"trial-{failed['trial_id']}": "FAILED", f"trial-{finished['trial_id']}": "FINISHED"}


@pytest.mark.full
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_resume_does_not_rerun_finished_trials(sweep_config, tmp_path: Path) -> None:
    """`ray-ltx tune` stopped (SIGTERM) after its first trial; --resume runs only the rest."""
    config = sweep_config(train_steps=2, checkpointing_steps=1)
    base = tmp_path / "base.yaml"
    base.write_text(config.to_yaml())
    sweep = write_sweep(tmp_path / "resume.yaml", {
        "name": "resume", "search_alg": "grid", "scheduler": "none", "max_concurrent_trials": 1,
        "space": {"lr": {"grid_search": [1.0e-4, 1.0e-3]}},
    })
    trials_dir = Path(config.output_dir) / "trials"
    log_path = tmp_path / "driver.log"
    with log_path.open("w") as log:
        driver = subprocess.Popen([sys.executable, "-m", "ray_ltx", "tune", "--config", str(base), "--sweep", str(sweep)],
                                  stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path,
                                  env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"})
        try:
            deadline = time.monotonic() + 600
            while not list(trials_dir.glob("*/trial_result.json")):
                assert driver.poll() is None, log_path.read_text()[-5000:]
                assert time.monotonic() < deadline, "no trial finished in 600 s"
                time.sleep(1)
            driver.send_signal(signal.SIGTERM)
            returncode = driver.wait(timeout=300)
        finally:
            if driver.poll() is None:
                driver.kill()
    output = log_path.read_text()
    assert returncode == 130, output[-5000:]
    assert "--resume" in output
    (first,) = [json.loads(p.read_text()) for p in trials_dir.glob("*/trial_result.json")]
    first_file = trials_dir / first["trial_id"] / "trial_result.json"
    written = first_file.stat().st_mtime_ns

    result = run_sweep(config, sweep, resume=True)

    assert len(result.trials) == 2 and {t["status"] for t in result.trials} == {"FINISHED"}
    assert first_file.stat().st_mtime_ns == written  # the finished trial did not train again
    parent, children = mlflow_runs(config.tracking.mlflow_tracking_uri)
    assert parent.info.status == "FINISHED" and parent.info.run_id == result.parent_run_id
    first_runs = [c for c in children if c.info.run_name == f"trial-{first['trial_id']}"]
    assert [c.info.run_id for c in first_runs] == [first["mlflow_run_id"]]
    assert Path(result.best_config_path).is_file()
    with pytest.raises(OutputDirError, match="already ran"):  # a second start of the same sweep is refused
        run_sweep(config, sweep)
