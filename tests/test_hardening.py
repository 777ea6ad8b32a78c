"""Hardening (issue 22): credentials never written down, MLflow outages at the end of a run, output safety
(run names, recursive deletes, locks, make-tiny-model), durable writes and whole-directory exports.

The fast tests run the real functions on local files; the slow ones train the tiny model against real
`mlflow server` processes (one behind MLflow's basic-auth app).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import MlflowServer, copy_tree
from ray_ltx import locks, storage, tracking
from ray_ltx.cli import main
from ray_ltx.config import build_config
from ray_ltx.data import cache as cache_lib
from ray_ltx.data import pipeline
from ray_ltx.data.sources import read_records
from ray_ltx.errors import CacheError, ConfigError, DatasetError, OutputDirError, TrackingError
from ray_ltx.redaction import redacted_config
from ray_ltx.tracking import mlflow_tracker
from ray_ltx.train import driver

REPO = Path(__file__).resolve().parents[1]
USER = "ltx-trainer"
SECRET = "S3CRET-" + secrets.token_hex(6)  # MLflow's basic-auth app wants at least 12 characters


@pytest.fixture
def clean_mlflow_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The credentials a run exports stay in this test (later tests talk to servers without auth)."""
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.setenv(name, "unset")
        monkeypatch.delenv(name)


def _auth_uri(server: MlflowServer, password: str = SECRET) -> str:
    return server.uri.replace("http://", f"http://{USER}:{password}@")


def _files_holding(secret: str, *roots: Path) -> list[Path]:
    return [path for root in roots for path in root.rglob("*")
            if path.is_file() and path.stat().st_size < 50_000_000 and secret.encode() in path.read_bytes()]


# -- credentials ------------------------------------------------------------------------------------


def test_user_pass_uri_with_a_port_is_split_for_mlflow(clean_mlflow_env) -> None:
    assert mlflow_tracker.connect("https://ltx%40team:p%3Ass@mlflow.example.com:8443/base") == \
        "https://mlflow.example.com:8443/base"
    assert (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]) == ("ltx@team", "p:ss")
    # Before: urllib looked up the host 'user:pass@127.0.0.1' and the traceback printed the password.
    with pytest.raises(TrackingError, match=r"http://\*\*\*@127\.0\.0\.1:9 is unreachable") as caught:
        mlflow_tracker.check_reachable(f"http://{USER}:{SECRET}@127.0.0.1:9", timeout=2)
    assert SECRET not in str(caught.value)


def test_credential_uris_are_redacted_in_config_yaml_params_and_messages(tmp_path: Path) -> None:
    config = build_config({
        "output_dir": str(tmp_path / "out"), "id_token": "BW_STYLE",
        "data_root": f"memory://KEY:{SECRET}@bucket/clips", "cache_dir": f"s3://KEY:{SECRET}@bucket/cache",
        "storage_path": f"gs://KEY:{SECRET}@bucket/ray", "mlflow_tracking_uri": f"https://{USER}:{SECRET}@mlflow:5000"})
    written = json.dumps(redacted_config(config)) + json.dumps(tracking.config_params(config))
    assert SECRET not in written and "s3://***@bucket/cache" in written and "https://***@mlflow:5000" in written
    # The caption trigger word is not a credential: users need it back from config.yaml and MLflow.
    assert redacted_config(config)["data"]["id_token"] == tracking.config_params(config)["data.id_token"] == "BW_STYLE"
    with pytest.raises(DatasetError, match=r"memory://\*\*\*@bucket/clips: no such directory") as caught:
        read_records(config)
    assert SECRET not in str(caught.value)
    manifest = cache_lib.Manifest(fingerprint={}, latent_spec={}, buckets=["9x64x96"], shards=[])
    summary = pipeline.format_summary(manifest, config.cache_dir)
    assert "s3://***@bucket/cache" in summary and SECRET not in summary
    with pytest.raises(CacheError) as caught:
        pipeline._check_fingerprint(config, config.cache_dir, {"model": "a"}, cache_lib.Manifest({"model": "b"}, {}, [], []),
                                    [], "digest")
    assert "s3://***@bucket/cache" in str(caught.value) and SECRET not in str(caught.value)


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-auth"), auth=(USER, SECRET)).start()
    yield server
    server.stop()


@pytest.mark.full
@pytest.mark.slow
def test_wrong_password_is_a_clear_error_without_traceback_or_password(auth_server, tmp_path: Path, capsys,
                                                                        clean_mlflow_env) -> None:
    wrong = "wrong-" + secrets.token_hex(8)
    code = main(["train", "--output_dir", str(tmp_path / "out"), "--mlflow_tracking_uri", _auth_uri(auth_server, wrong)])
    err = capsys.readouterr().err
    assert code == TrackingError.exit_code, err
    assert f"refused the request with user '{USER}' (HTTP 401)" in err, err
    assert "Traceback" not in err and wrong not in err and "http://***@127.0.0.1" in err
    assert not (tmp_path / "out" / "ray").exists()  # refused before any cluster or model work


@pytest.mark.full
@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")
def test_user_pass_uri_records_the_run_and_no_written_file_holds_the_password(
        make_config, auth_server, tmp_path: Path, capsys, caplog, monkeypatch, clean_mlflow_env) -> None:
    import ray
    from ray.train.v2._internal.state.state_actor import get_state_actor

    caplog.set_level(logging.INFO)
    monkeypatch.setenv("RAY_TRAIN_ENABLE_STATE_TRACKING", "1")  # what the dashboard's Train tab shows
    started = time.time()
    result = driver.train(make_config(train_steps=2, checkpointing_steps=2, report_to="mlflow",
                                      mlflow_tracking_uri=_auth_uri(auth_server), tracker_name="basic-auth"))
    run = MlflowClient(auth_server.uri).get_run(result.mlflow_run_id)  # credentials: the run exported them
    assert run.info.status == "FINISHED"
    assert run.data.params["training.rank"] == "8"
    assert run.data.params["tracking.mlflow_tracking_uri"] == auth_server.uri.replace("http://", "http://***@")
    assert sorted(m.step for m in MlflowClient(auth_server.uri).get_metric_history(run.info.run_id, "loss")) == [1, 2]
    assert (Path(result.output_dir) / "config.yaml").is_file()

    assert SECRET not in capsys.readouterr().out + caplog.text
    logs = Path(ray._private.worker._global_node.get_logs_dir_path())
    fresh_logs = [path for path in logs.rglob("*") if path.is_file() and path.stat().st_mtime >= started]
    assert fresh_logs, "Ray wrote no log during the run"
    assert _files_holding(SECRET, Path(result.output_dir), auth_server.root) == []  # artifacts, store, log
    assert [path for path in fresh_logs if SECRET.encode() in path.read_bytes()] == []
    # What the Ray dashboard shows of the run: its train loop config.
    state = get_state_actor()
    runs = ray.get(state.get_train_runs.remote()) if state else {}
    assert runs and all(SECRET not in run.model_dump_json() for run in runs.values())


# -- MLflow down at the end of a run ----------------------------------------------------------------


@pytest.mark.full
@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")
def test_mlflow_down_at_the_end_keeps_the_run_and_says_how_to_log_the_weights(
        make_config, tmp_path: Path, monkeypatch, caplog) -> None:
    server = MlflowServer(tmp_path / "mlflow").start()
    stopped = []

    def stop_server_then_copy(checkpoint_path: str, output_dir: str) -> None:
        process = server.process
        server.stop()
        stopped.append(process.poll())  # the server process is gone when the end-of-run tracking starts
        real_copy_export(checkpoint_path, output_dir)

    real_copy_export = driver._copy_export
    monkeypatch.setattr(driver, "_copy_export", stop_server_then_copy)
    monkeypatch.setattr(driver, "END_OF_RUN_WAIT_S", 2.0)
    caplog.set_level(logging.WARNING)
    try:
        result = driver.train(make_config(train_steps=2, checkpointing_steps=2, report_to="mlflow",
                                          mlflow_tracking_uri=server.uri))
        assert stopped and stopped[0] is not None
        weights = Path(result.output_dir) / "pytorch_lora_weights.safetensors"
        assert weights.is_file()
        warning = next(r.getMessage() for r in caplog.records if "could not record the end of run" in r.getMessage())
        assert f"The weights are safe at {weights}" in warning and result.mlflow_run_id in warning

        server.start()
        client = MlflowClient(server.uri)
        assert client.get_run(result.mlflow_run_id).info.status == "RUNNING"  # what the outage left
        commands = [line.strip() for line in warning.splitlines()[1:]]
        for command in commands:  # the recovery the warning gives works as written
            done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=300,
                                  env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"})
            assert done.returncode == 0, (command, done.stderr[-2000:])
        assert [a.path for a in client.list_artifacts(result.mlflow_run_id, "weights")] == \
            ["weights/pytorch_lora_weights.safetensors"]
        assert client.get_run(result.mlflow_run_id).info.status == "FINISHED"
    finally:
        server.stop()


def test_mlflow_down_when_a_run_fails_does_not_hide_the_run_s_error(caplog) -> None:
    caplog.set_level(logging.WARNING)
    driver._end_run_quietly(mlflow_tracker.MlflowTracker("http://127.0.0.1:9", "0123abcd"), "FAILED",
                            "TrainingDivergedError: non-finite loss", wait_s=1.0)
    assert "run 0123abcd could not be marked FAILED and stays RUNNING" in caplog.text


# -- output safety ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["..", "../..", "a/b", ".hidden", ""])
def test_run_name_must_be_one_safe_directory_name(name: str) -> None:
    with pytest.raises(ConfigError, match=r"distributed\.run_name \(--run_name\).*one directory name"):
        build_config({"run_name": name})
    assert build_config({"run_name": "lora-r64_v1.2"}).distributed.run_name == "lora-r64_v1.2"


def test_recursive_deletes_refuse_root_home_cwd_and_their_parents(tmp_path: Path, monkeypatch) -> None:
    home, work = tmp_path / "users" / "me", tmp_path / "projects" / "ltx" / "work"
    for path in (home, work, tmp_path / "projects" / "old-run"):
        path.mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    for path, reason in (("/", "the filesystem root"), (home, "your home directory"), (home.parent, "your home"),
                         (work, "the current directory"), (work.parent.parent, "the current directory"),
                         ("s3://bucket", "the root of a bucket")):
        with pytest.raises(OutputDirError, match=f"refusing to delete .*{reason}"):
            storage.check_deletable(str(path))
    with pytest.raises(OutputDirError):
        storage.delete_dir(str(work.parent))
    assert work.is_dir() and home.is_dir()
    storage.delete_dir(str(tmp_path / "projects" / "old-run"))  # a directory of its own goes
    assert not (tmp_path / "projects" / "old-run").exists()


def test_make_tiny_model_refuses_a_directory_it_did_not_write(tmp_path: Path, capsys) -> None:
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["make-tiny-model", "--out", str(out)]) == OutputDirError.exit_code
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "mine"
    assert main(["make-tiny-model", "--out", str(out), "--overwrite"]) == 0
    assert (out / "model_index.json").is_file() and not (out / "notes.txt").exists()


@pytest.mark.full
@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")
def test_overwrite_output_dir_replaces_the_run_and_keeps_the_cache(make_config, shared_cache: Path,
                                                                   tmp_path: Path) -> None:
    out = tmp_path / "out"
    copy_tree(shared_cache, out / "cache")  # the default cache_dir: inside output_dir
    shards = {path: path.stat().st_mtime_ns for path in (out / "cache").rglob("*.parquet")}
    first = driver.train(make_config(cache_dir=None, train_steps=2, checkpointing_steps=2, seed=1))
    (out / "validation").mkdir()
    (out / "validation" / "old.mp4").write_bytes(b"old video")
    lora = (out / "pytorch_lora_weights.safetensors").read_bytes()
    with pytest.raises(OutputDirError, match="holds another training run"):
        driver.train(make_config(cache_dir=None, train_steps=4, checkpointing_steps=4, seed=2))
    second = driver.train(make_config(cache_dir=None, train_steps=4, checkpointing_steps=4, seed=2,
                                      overwrite_output_dir=True))
    assert (first.steps, second.steps) == (2, 4)
    assert sorted(p.name for p in (out / "ray" / "train").glob("checkpoint_0*")) == ["checkpoint_00000004"]
    assert json.loads((out / "training_config.json").read_text())["train steps"] == 4
    assert (out / "pytorch_lora_weights.safetensors").read_bytes() != lora
    assert not (out / "validation").exists()
    assert {path: path.stat().st_mtime_ns for path in (out / "cache").rglob("*.parquet")} == shards


# -- locks --------------------------------------------------------------------------------------------

HOLDER = """
import sys, time
from ray_ltx import locks
from ray_ltx.errors import UserError
with locks.exclusive(sys.argv[1], sys.argv[2], UserError):
    print("held", flush=True)
    time.sleep(600)
"""


def _hold_in_another_process(directory: Path, role: str) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(directory), role], stdout=subprocess.PIPE,
                              text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_second_run_on_a_locked_output_or_cache_dir_is_refused_then_a_dead_holder_s_lock_is_taken(
        tmp_path: Path) -> None:
    out, cache = tmp_path / "out", tmp_path / "cache"
    holders = [_hold_in_another_process(out, "output"), _hold_in_another_process(cache, "cache")]
    try:
        config = build_config({"output_dir": str(out), "cache_dir": str(cache), "report_to": "none"})
        with pytest.raises(OutputDirError, match=f"in use by another ray-ltx run: pid {holders[0].pid} on "
                                                 f"{re.escape(socket.gethostname())}"):
            driver.train(config)
        with pytest.raises(CacheError, match=f"in use by another ray-ltx run: pid {holders[1].pid}"):
            pipeline.preprocess(config)
        assert not (out / "config.yaml").exists() and not (out / "ray").exists()
    finally:
        for holder in holders:
            holder.kill()
            holder.wait()
    lock_file = out / ".ray-ltx-output.lock"
    assert json.loads(lock_file.read_text())["pid"] == holders[0].pid  # SIGKILL left the lock behind
    with locks.exclusive(str(out), "output", OutputDirError):
        assert json.loads(lock_file.read_text())["pid"] == os.getpid()
    assert not lock_file.exists()


def test_a_lock_from_another_host_expires_with_its_heartbeat_and_a_reused_pid_is_not_its_holder(tmp_path: Path) -> None:
    lock_file = tmp_path / ".ray-ltx-cache.lock"

    def plant(host: str, pid: int, pid_start: str, age: float) -> None:
        lock_file.write_text(json.dumps({"host": host, "pid": pid, "pid_start": pid_start, "started": time.time(),
                                         "command": "ray-ltx preprocess", "token": "t"}))
        os.utime(lock_file, (time.time() - age, time.time() - age))

    plant("gpu-node-7", 4242, "1", age=5)
    with pytest.raises(CacheError, match=r"pid 4242 on gpu-node-7 .*last heartbeat \d+ s ago.*expires 90 s"):
        locks.acquire(str(tmp_path), "cache", CacheError)
    plant("gpu-node-7", 4242, "1", age=locks.STALE_S + 5)
    locks.acquire(str(tmp_path), "cache", CacheError).release()
    plant(socket.gethostname(), os.getppid(), "not-its-start-time", age=0)  # a live pid, now another process
    locks.acquire(str(tmp_path), "cache", CacheError).release()
    assert not lock_file.exists()


# -- durability ---------------------------------------------------------------------------------------


def test_local_writes_fsync_the_file_before_the_rename_and_the_directory_after(tmp_path: Path, monkeypatch) -> None:
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(descriptor: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{descriptor}")))
        real_fsync(descriptor)

    def replace(source: str, dest: str) -> None:
        events.append(("rename", str(dest)))
        real_replace(source, dest)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    cache_dir = tmp_path / "cache"
    cache_lib.write_manifest(str(cache_dir), cache_lib.Manifest({}, {}, ["9x64x96"], []))
    (kind, temp), rename, directory = events
    assert kind == "fsync" and Path(temp).parent == cache_dir and Path(temp).name.startswith(".tmp-")
    assert rename == ("rename", str(cache_dir / cache_lib.MANIFEST)) and directory == ("fsync", str(cache_dir))


def test_a_crash_mid_export_leaves_the_previous_transformer_whole(tmp_path: Path, monkeypatch) -> None:
    from ray_ltx.train.checkpoint import EXPORT_DIR

    export = tmp_path / "checkpoint" / EXPORT_DIR / "transformer"
    export.mkdir(parents=True)
    new = {"config.json": b"{}", "model-00001.safetensors": b"new" * 1000, "model-00002.safetensors": b"new" * 1000}
    for name, data in new.items():
        (export / name).write_bytes(data)
    out = tmp_path / "out"
    (out / "transformer").mkdir(parents=True)
    old = {"config.json": b"{old}", "model-00001.safetensors": b"old", "model-00002.safetensors": b"old"}
    for name, data in old.items():
        (out / "transformer" / name).write_bytes(data)
    copied: list[str] = []
    real_copy = storage._copy_file

    def dies_after_one_file(source: str, fs, dest: str) -> None:
        if copied:
            raise OSError(errno.EIO, "injected: the copy dies half-way")
        real_copy(source, fs, dest)
        copied.append(dest)

    monkeypatch.setattr(storage, "_copy_file", dies_after_one_file)
    with pytest.raises(OSError, match="half-way"):
        driver._copy_export(str(tmp_path / "checkpoint"), str(out))
    assert len(copied) == 1  # one file of the new transformer was written when it died

    def contents() -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in (out / "transformer").iterdir()}

    assert contents() == old and [p.name for p in out.iterdir()] == ["transformer"]
    monkeypatch.undo()
    driver._copy_export(str(tmp_path / "checkpoint"), str(out))
    assert contents() == new and [p.name for p in out.iterdir()] == ["transformer"]



def test_outputs_in_object_storage_are_uploaded_to_tracking_from_a_local_copy(tmp_path: Path) -> None:
    """--output_dir s3://... : the tracker logs (and registers) real files, not paths that exist only remotely."""
    from ray_ltx.train.driver import _local_outputs

    remote = tmp_path / "bucket" / "run"
    (remote / "transformer").mkdir(parents=True)
    (remote / "transformer" / "config.json").write_text("{}")
    (remote / "transformer" / "diffusion_pytorch_model.safetensors").write_bytes(b"weights")
    (remote / "config.yaml").write_text("rank: 8\n")
    with _local_outputs(f"file://{remote}", ("config.yaml", "transformer", "memory.md")) as local:
        assert local != remote and (local / "config.yaml").read_text() == "rank: 8\n"
        assert (local / "transformer" / "diffusion_pytorch_model.safetensors").read_bytes() == b"weights"
        assert sorted(p.name for p in local.iterdir()) == ["config.yaml", "transformer"]  # memory.md: none there
    assert not local.exists()
    with _local_outputs(str(remote), ("config.yaml",)) as same:
        assert same == remote
