"""Faults injected for real (worker SIGKILL, checkpoint crash, preprocessing kill, driver kill, MLflow
restart), what the run loses (at most the steps since the last checkpoint), and security checks."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import MlflowServer, base_config
from ray_ltx.data.cache import LatentCache
from ray_ltx.data.pipeline import preprocess
from ray_ltx.errors import CheckpointError, OutputDirError
from ray_ltx.train.checkpoint import latest_checkpoint
from ray_ltx.train.driver import train

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_cluster")]
REPO = Path(__file__).resolve().parents[1]


def _steps(uri: str, run_id: str, key: str = "loss") -> list[int]:
    return [m.step for m in MlflowClient(uri).get_metric_history(run_id, key)]


def _losses(uri: str, run_id: str) -> dict[int, list[float]]:
    out: dict[int, list[float]] = {}
    for m in MlflowClient(uri).get_metric_history(run_id, "loss"):
        out.setdefault(m.step, []).append(m.value)
    return out


def test_worker_sigkill_resumes_from_the_checkpoint(make_config, tmp_path: Path, monkeypatch) -> None:
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    monkeypatch.setenv("RAY_LTX_FAULT", "kill@3:0")  # rank 0 SIGKILLs itself in its 4th step
    result = train(make_config(train_steps=6, checkpointing_steps=2, max_failures=2, report_to="mlflow",
                               mlflow_tracking_uri=uri))
    assert result.steps == 6
    # the fault fired (its marker) and the worker group was restarted once, from checkpoint 2
    assert (Path(result.output_dir) / "ray" / "train" / ".fault-kill-3-0.fired").is_file()
    (restart,) = result.workers["restarts"]
    assert restart["steps_lost"] == 1 and result.workers["sizes"] == [2, 2]
    steps = _steps(uri, result.mlflow_run_id)
    assert steps.count(1) == steps.count(2) == 1 and set(steps) == set(range(1, 7))
    from diffusers import LTXPipeline

    LTXPipeline.from_pretrained(make_config().model.pretrained_model_name_or_path).load_lora_weights(result.output_dir)


@pytest.mark.full
def test_crash_while_writing_a_checkpoint_never_uses_it(make_config, tmp_path: Path, monkeypatch) -> None:
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    monkeypatch.setenv("RAY_LTX_FAULT", "checkpoint@4:1")  # rank 1 dies with its part of checkpoint 4 half-written
    result = train(make_config(train_steps=6, checkpointing_steps=2, max_failures=1, report_to="mlflow",
                               mlflow_tracking_uri=uri))
    assert result.steps == 6
    losses = _losses(uri, result.mlflow_run_id)
    # Steps 3-4 ran twice (the restart resumed from checkpoint 2, not from the broken checkpoint 4), and the
    # run's loss curve holds each step once: the replayed steps were already logged before the crash.
    assert sorted(losses) == list(range(1, 7)) and {len(values) for values in losses.values()} == {1}


@pytest.mark.full
def test_incomplete_checkpoint_is_passed_over(make_config) -> None:
    result = train(make_config(train_steps=4, checkpointing_steps=2))
    run_dir = Path(result.output_dir) / "ray" / "train"
    broken = run_dir / "checkpoint_00000009"
    broken.mkdir()
    (broken / "state.json").write_text(json.dumps({"step": 9, "world_size": 2}))
    (broken / "complete-rank0.json").write_text(json.dumps({"rank": 0, "files": {"state.json": 30}}))
    path, state = latest_checkpoint(str(run_dir))
    assert Path(path).name == "checkpoint_00000004" and state.step == 4


@pytest.mark.full
def test_preprocessing_worker_killed_mid_shard(tiny_model: Path, sample_data: Path, tmp_path: Path,
                                               monkeypatch) -> None:
    monkeypatch.setenv("RAY_LTX_FAULT", "shard@0")
    manifest = preprocess(base_config(tiny_model, sample_data, tmp_path / "out"))
    cache_dir = tmp_path / "out" / "cache"
    assert (cache_dir / ".fault-shard-0-0.fired").exists()  # the kill really happened
    ids = LatentCache.open(str(cache_dir)).sample_ids()
    assert len(ids) == len(set(ids)) == manifest.num_samples == 6  # no duplicate, none missing


@pytest.mark.full
def test_driver_killed_then_resumed(tiny_model: Path, sample_data: Path, shared_cache: Path, tmp_path: Path) -> None:
    import ray

    address = ray.get_runtime_context().gcs_address
    out = tmp_path / "out"
    flags = ["--pretrained_model_name_or_path", str(tiny_model), "--data_root", str(sample_data),
             "--cache_dir", str(shared_cache), "--video_resolution_buckets", "9x64x96", "17x64x96",
             "--id_token", "BW_STYLE", "--transformer_dtype", "fp32", "--vae_dtype", "fp32",
             "--text_encoder_dtype", "fp32", "--rank", "8", "--lora_alpha", "8", "--num_workers", "2",
             "--train_steps", "400", "--checkpointing_steps", "2", "--report_to", "none", "--output_dir", str(out),
             "--ray_address", address]
    driver = subprocess.Popen([sys.executable, "-m", "ray_ltx", "train", *flags], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    run_dir = out / "ray" / "train"
    deadline = time.monotonic() + 400
    while latest_checkpoint(str(run_dir)) is None:
        assert time.monotonic() < deadline and driver.poll() is None, "no checkpoint before the deadline"
        time.sleep(1)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    _, before = latest_checkpoint(str(run_dir))
    time.sleep(5)  # Ray notices the dead driver and stops its workers
    resumed = subprocess.run([sys.executable, "-m", "ray_ltx", "train", *flags[:-6], "--train_steps",
                              str(before.step + 4), "--output_dir", str(out), "--report_to", "none",
                              "--ray_address", address, "--resume_from_checkpoint", "latest"],
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log = resumed.stderr + resumed.stdout
    assert re.search(r"resuming from .*checkpoint_\d+ \(step [1-9]", log)
    # a non-interactive log: progress lines with an ETA from rank 0, none of Ray's per-report chatter
    assert re.search(rf"step {before.step + 1}/{before.step + 4} steps \(\d+%\), loss [0-9.]+.*ETA \d+:\d\d", log), log[-3000:]
    assert f"step {before.step + 4}/{before.step + 4} steps (100%)" in log
    assert "Reporting training result" not in log and "Failed to query Ray Train Controller" not in log
    _, after = latest_checkpoint(str(run_dir))
    assert after.step == before.step + 4 >= 6


@pytest.mark.full
def test_mlflow_server_restart_mid_run_loses_no_metric(make_config, tmp_path: Path) -> None:
    server = MlflowServer(tmp_path / "mlflow").start()
    config = make_config(train_steps=30, checkpointing_steps=5, report_to="mlflow", mlflow_tracking_uri=server.uri)
    out = tmp_path / "out" / "ray" / "train"

    outage: list[float] = []

    def bounce() -> None:
        deadline = time.monotonic() + 600
        while latest_checkpoint(str(out)) is None and time.monotonic() < deadline:
            time.sleep(0.2)
        server.stop()
        outage.append(time.time())
        time.sleep(8)
        outage.append(time.time())
        server.start()

    bouncer = threading.Thread(target=bounce, daemon=True)
    bouncer.start()
    try:
        result = train(config)
        bouncer.join(timeout=120)
        client = MlflowClient(server.uri)
        assert client.get_run(result.mlflow_run_id).info.status == "FINISHED"
        assert sorted(_steps(server.uri, result.mlflow_run_id)) == list(range(1, 31))
        # the outage overlapped training: steps were computed while the server was down, logged after
        during = [m.step for m in client.get_metric_history(result.mlflow_run_id, "loss")
                  if outage[0] * 1000 <= m.timestamp <= outage[1] * 1000]
        assert len(outage) == 2 and during, (outage, "no step was trained while the server was down")
    finally:
        server.stop()


@pytest.mark.full
def test_nan_loss_skipped_and_counted_when_asked(make_config, tmp_path: Path, monkeypatch) -> None:
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    monkeypatch.setenv("RAY_LTX_FAULT", "nan@1")
    result = train(make_config(train_steps=4, nan_policy="skip", report_to="mlflow", mlflow_tracking_uri=uri))
    assert result.steps == 4
    skipped = MlflowClient(uri).get_metric_history(result.mlflow_run_id, "skipped_steps")
    assert max(m.value for m in skipped) == 1 and 2 not in _steps(uri, result.mlflow_run_id)


@pytest.mark.full
def test_other_config_checkpoint_and_occupied_output_dir_are_refused(make_config) -> None:
    train(make_config(train_steps=2, checkpointing_steps=2))
    with pytest.raises(CheckpointError, match="rank: checkpoint has 8, config has 16"):
        train(make_config(train_steps=4, rank=16, resume_from_checkpoint="latest"))
    with pytest.raises(OutputDirError, match="holds another training run"):
        train(make_config(train_steps=4))
    before = sorted(p.name for p in (Path(make_config().output_dir) / "ray" / "train").iterdir())
    assert "checkpoint_00000002" in before  # nothing already written was touched


# -- security ------------------------------------------------------------------------------------


def test_no_unsafe_deserialisation_or_remote_code() -> None:
    sources = {p: p.read_text() for p in (REPO / "ray_ltx").rglob("*.py")}
    for path, text in sources.items():
        for call in re.findall(r"torch\.load\([^)]*\)", text, flags=re.S):
            assert "weights_only=True" in call, (path, call)
        assert "trust_remote_code=True" not in text, path
        assert "pickle.load" not in text, path


@pytest.mark.full
def test_credentials_never_reach_params_artifacts_or_logs(tiny_model: Path, sample_data: Path, tmp_path: Path) -> None:
    import tempfile

    secret = "sekrit-token-4f9a1c"
    ray_tmp = tempfile.mkdtemp(prefix="rl-", dir="/tmp")  # Ray's socket paths must stay under 107 bytes
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_TOKEN": secret, "HF_TOKEN": secret, "AWS_SECRET_ACCESS_KEY": secret,
           "RAY_TMPDIR": ray_tmp}
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "ray_ltx", "train", "--pretrained_model_name_or_path", str(tiny_model),
         "--data_root", str(sample_data), "--video_resolution_buckets", "9x64x96", "17x64x96",
         "--transformer_dtype", "fp32", "--vae_dtype", "fp32", "--text_encoder_dtype", "fp32", "--rank", "4",
         "--lora_alpha", "4", "--num_workers", "1", "--train_steps", "2", "--checkpointing_steps", "2",
         "--output_dir", str(out), "--mlflow_tracking_uri", uri, "--no-log_system_metrics"],
        capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert secret not in result.stdout + result.stderr
    logs = list(Path(ray_tmp).rglob("*.log")) + list(Path(ray_tmp).rglob("*.out")) + list(Path(ray_tmp).rglob("*.err"))
    assert logs, "Ray wrote no logs where RAY_TMPDIR points"
    for root in (out, tmp_path / "mlruns", Path(ray_tmp)):
        for path in root.rglob("*"):
            if path.is_file() and path.stat().st_size < 50_000_000:
                assert secret.encode() not in path.read_bytes(), path
