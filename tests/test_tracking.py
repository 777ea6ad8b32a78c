"""Tracking: the tracker interface with MLflow (a real SQLite store and a real `mlflow server`) and with W&B (its
real offline mode, read back from the offline run folders), and what training, resume and generate record there."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from ray_ltx import tracking
from ray_ltx.config import Config, build_config
from ray_ltx.data.samples import moving_shape_frames, write_video
from ray_ltx.errors import ConfigError, TrackingError, TrainingDivergedError
from ray_ltx.train.driver import train

PROMPT = "BW_STYLE a red circle moves right"


def _artifacts(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    found = set()
    for item in client.list_artifacts(run_id, path):
        found |= _artifacts(client, run_id, item.path) if item.is_dir else {item.path}
    return found


def _steps(client: MlflowClient, run_id: str, key: str = "loss") -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def _images(client: MlflowClient, run_id: str) -> dict[tuple[str, int], str]:
    """The images the run page shows, as MLflow's log_image(key=, step=) stores them: {(key, step): png path}."""
    found = {}
    for path in _artifacts(client, run_id, "images"):
        name = Path(path).name
        if name.endswith(".png"):
            key, _, step, *_ = name.removesuffix(".png").split("+")
            found[(key.replace("~", "/"), int(step))] = path
    return found


def wandb_records(root: Path, run_id: str) -> list[dict[str, Any]]:
    """Every record of the offline W&B run ``run_id`` under ``root``, writer by writer, read by W&B's own CLI."""
    folders = sorted((root / "wandb").glob(f"offline-run-*-{run_id}*"))  # W&B adds -1 to a second one in a second
    assert folders, f"no offline run {run_id} in {root / 'wandb'}"
    records = []
    for folder in folders:
        shown = subprocess.run([str(Path(sys.executable).parent / "wandb"), "leet", "inspect", "--json", str(folder)],
                               capture_output=True, text=True, timeout=120, check=True)
        records += [{**json.loads(line), "folder": folder} for line in shown.stdout.splitlines() if line.startswith("{")]
    return records


def _of(records: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [r[kind] | {"folder": r["folder"]} for r in records if r["type"] == kind]


def _params(records: list[dict[str, Any]]) -> dict[str, Any]:
    return {k: v for r in _of(records, "config") for k, v in r.get("update", {}).items()}


def _summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for record in _of(records, "summary"):
        summary.update(record.get("update", {}))
        for item in record.get("remove", []):
            summary.pop(item.get("key") or ".".join(item.get("nested_key", [])), None)
    return summary


@pytest.fixture
def clip(tmp_path: Path) -> Path:
    return write_video(tmp_path / "prompt_00.mp4", moving_shape_frames(9, 64, 96), fps=8)


@pytest.fixture
def wandb_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "wandb-root"
    root.mkdir()
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(root))
    monkeypatch.setenv("WANDB_SILENT", "true")
    return root


@pytest.fixture(scope="module")
def sqlite_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One SQLite store for the module's tests without training (MLflow takes seconds to create its tables)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlruns') / 'mlflow.db'}"


def _config(tmp_path: Path, **values: Any) -> Config:
    return build_config({"output_dir": str(tmp_path / "out"), "log_system_metrics": False, "rank": 8,
                         **values}).resolved()


def _exercise(config: Config, clip: Path, weights: Path) -> tuple[str, str | None]:
    """What a training does through the interface: the driver starts the run, rank 0 (another process, here another
    object) reattaches to log metrics and a validation video, the driver logs the weights and ends the run FAILED."""
    driver = tracking.start(config, run_name="interface", extra_params={"cluster.workers": 1})
    rank0 = tracking.attach(driver.handle())
    for step in (1, 2, 3):
        rank0.log_metrics(step, {"loss": 1.0 / step, "lr": 0.1})
        if step == 2:
            rank0.log_video(step, "validation/prompt_00", clip, f"{PROMPT}\n9x64x96")
    rank0.close()
    registered = driver.log_model(weights, "weights", config.tracking.register_model)
    driver.log_table([{"trial_id": "a1", "val_loss": 0.5}, {"trial_id": "b2"}], "sweep/trials.json")
    driver.set_tags({"best_trial_id": "a1"})
    driver.end("FAILED", error="RuntimeError: boom")
    return driver.run_id, registered


def test_mlflow_tracker_records_the_run_lifecycle_previews_and_a_registered_model(tmp_path: Path, clip: Path,
                                                                                 sqlite_store: str) -> None:
    config = _config(tmp_path, report_to="mlflow", mlflow_tracking_uri=sqlite_store, register_model="interface-lora")
    weights = tmp_path / "pytorch_lora_weights.safetensors"
    weights.write_bytes(b"lora weights")
    run_id, registered = _exercise(config, clip, weights)

    client = MlflowClient(config.tracking_uri)
    run = client.get_run(run_id)
    assert (run.info.status, run.data.tags["error"]) == ("FAILED", "RuntimeError: boom")
    assert run.info.run_name == "interface"
    assert run.data.params["training.rank"] == "8" and run.data.params["cluster.workers"] == "1"
    assert _steps(client, run_id) == [1, 2, 3]
    assert {"validation/step_000002/prompt_00.mp4", "validation/step_000002/prompt_00.txt",
            "weights/pytorch_lora_weights.safetensors", "sweep/trials.json"} <= _artifacts(client, run_id)
    assert run.data.tags["best_trial_id"] == "a1"
    preview = Image.open(client.download_artifacts(run_id, _images(client, run_id)[("validation/prompt_00", 2)]))
    assert preview.size == (8 * 96, 64)  # eight frames of the video side by side
    assert registered == "models:/interface-lora/1"
    assert Path(tracking.download("models:/interface-lora/latest", config.tracking_uri),
                "pytorch_lora_weights.safetensors").read_bytes() == b"lora weights"
    with pytest.raises(ConfigError, match=r"models:/no-such-model/latest: not found .*--register_model NAME"):
        tracking.download("models:/no-such-model/latest", config.tracking_uri)


def test_mlflow_run_reopened_by_a_restarted_rank_0_keeps_one_value_per_step(tmp_path: Path, sqlite_store: str) -> None:
    config = _config(tmp_path, report_to="mlflow", mlflow_tracking_uri=sqlite_store)
    driver = tracking.start(config)
    first = tracking.attach(driver.handle())
    for step in (1, 2, 3):  # steps 1-2 checkpointed, 3 logged before the worker died
        first.log_metrics(step, {"loss": 1.0 / step})
    first.close()
    restarted = tracking.attach(driver.handle())  # back from checkpoint 2: steps 3-4 run (again)
    for step in (3, 4):
        restarted.log_metrics(step, {"loss": 1.0 / step, "val_loss": 0.5})
    restarted.close()
    reopened = tracking.resume(config, driver.run_id, {"training.train_steps": "8"})  # --resume_from_checkpoint
    assert reopened is not None and reopened.run_id == driver.run_id
    client = MlflowClient(config.tracking_uri)
    assert _steps(client, driver.run_id) == [1, 2, 3, 4] and _steps(client, driver.run_id, "val_loss") == [3, 4]
    run = client.get_run(driver.run_id)
    assert run.info.status == "RUNNING" and run.data.tags["resumed.training.train_steps"] == "8"
    assert tracking.resume(config, "0" * 32, {}) is None


def test_wandb_tracker_records_the_run_offline(tmp_path: Path, clip: Path, wandb_offline: Path) -> None:
    config = _config(tmp_path, report_to="wandb", tracker_name="ray-ltx-tests", register_model="interface-lora")
    tracking.check(config)
    weights = tmp_path / "pytorch_lora_weights.safetensors"
    weights.write_bytes(b"lora weights")
    run_id, registered = _exercise(config, clip, weights)

    records = wandb_records(wandb_offline, run_id)
    run = _of(records, "run")[0]  # the driver's writer, first
    assert run["project"] == "ray-ltx-tests" and run["display_name"] == "interface"
    params = _params(records)
    assert params["training.rank"] == "8" and params["cluster.workers"] == "1"
    history = [(h["step"]["num"], h["item"]) for h in _of(records, "history")]
    assert [step for step, item in history if "loss" in item] == [1, 2, 3]
    video = next(item for step, item in history if step == 2 and "validation/prompt_00.path" in item)
    assert video["validation/prompt_00._type"] == "video-file" and PROMPT in video["validation/prompt_00.caption"]
    saved = next(r["folder"] for r in _of(records, "history") if r["step"]["num"] == 2) / "files"
    with av.open(str(saved / video["validation/prompt_00.path"])) as container:
        assert len([f for f in container.decode(video=0)]) == 9
    (artifact,) = _of(records, "artifact")
    assert (artifact["name"], artifact["type"]) == ("interface-lora", "model") and registered.endswith(":latest")
    assert [e["exit_code"] for e in _of(records, "exit")][-1] == 1
    summary = _summary(records)
    assert summary["run_status"] == "FAILED" and summary["error"] == "RuntimeError: boom"
    assert summary["best_trial_id"] == "a1"
    table = next(r["folder"] for r in _of(records, "files") if any(f["path"] == "sweep/trials.json" for f in r["files"]))
    assert json.loads((table / "files" / "sweep" / "trials.json").read_text())["val_loss"] == [0.5, None]

    tracking.resume(config, run_id, {"training.train_steps": "8"})  # a resumed training reopens the run
    summary = _summary(wandb_records(wandb_offline, run_id))
    assert summary["run_status"] == "RUNNING" and "error" not in summary


def test_wandb_rank_0_on_another_node_writes_offline_records_where_it_says(tmp_path: Path,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    """The handle carries the driver's folder; on a node without it, rank 0 makes it and names the node."""
    import socket

    from ray_ltx.tracking.wandb_tracker import WandbTracker

    folder = tmp_path / "driver-only" / "out"  # the driver's output_dir, absent on this "node"
    handle = {"backend": "wandb", "run_id": "abc123", "system_metrics": False,
              "settings": {"project": "p", "dir": str(folder), "mode": "offline", "name": None, "group": None,
                           "job_type": "train"}}
    with caplog.at_level("WARNING", logger="ray_ltx.tracking.wandb_tracker"):
        tracker = WandbTracker.attach(handle)
    assert folder.is_dir() and tracker.settings["dir"] == str(folder)
    assert socket.gethostname() in caplog.text and "wandb sync" in caplog.text
    caplog.clear()
    WandbTracker.attach(handle)  # the folder exists now (a shared one, or the driver's node): nothing to say
    assert not caplog.text


# -- training runs (slow) ---------------------------------------------------------------------------


@pytest.mark.full
@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")
def test_run_against_a_tracking_server_holds_everything(make_config, mlflow_server, tiny_model: Path,
                                                        tmp_path: Path) -> None:
    from ray_ltx.generate import generate_video

    config = make_config(train_steps=4, checkpointing_steps=2, report_to="mlflow",
                         mlflow_tracking_uri=mlflow_server.uri, tracker_name="tracking-test",
                         validation_prompts=[PROMPT], validation_steps=2,
                         validation_height=64, validation_width=96, validation_num_frames=9,
                         validation_inference_steps=2, holdout_samples=1, register_model="bw-style")
    result = train(config)
    client = MlflowClient(mlflow_server.uri)
    run = client.get_run(result.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["training.rank"] == "8" and run.data.params["optimizer.lr"] == "0.001"
    assert run.data.params["version.ray"].startswith("2.60") and "version.diffusers" in run.data.params
    assert run.data.params["cluster.workers"] == "2"
    assert run.data.tags["training_type"] == "lora" and run.data.tags["model_id"] == config.model.pretrained_model_name_or_path
    assert _steps(client, run.info.run_id) == [1, 2, 3, 4]  # two workers, one value per step
    for key in ("lr", "grad_norm", "step_time_s", "samples_per_s", "tokens_per_s", "val_loss"):
        assert client.get_metric_history(run.info.run_id, key), key
    artifacts = _artifacts(client, run.info.run_id)
    for expected in ("config.yaml", "config/training_config.json", "weights/pytorch_lora_weights.safetensors",
                     "memory/memory.md", "memory/memory_report.json", "cache/manifest_summary.json",
                     "validation/step_000002/prompt_00.mp4", "validation/step_000004/prompt_00.mp4",
                     "validation/step_000002/prompt_00.txt"):
        assert expected in artifacts, (expected, sorted(artifacts))
    memory = json.loads(Path(client.download_artifacts(run.info.run_id, "memory/memory_report.json")).read_text())
    stages = memory["data"] if "data" in memory else memory
    assert "before training start" in json.dumps(stages) and "after validation end" in json.dumps(stages)
    video = client.download_artifacts(run.info.run_id, "validation/step_000004/prompt_00.mp4")
    with av.open(video) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 9 and frames[0].shape == (64, 96, 3)
    assert (Path(result.output_dir) / "validation" / "step_000002" / "prompt_00.mp4").is_file()
    # What the run page shows of each validation: a frame strip per video, at its step.
    previews = _images(client, run.info.run_id)
    assert sorted(previews) == [("validation/prompt_00", 2), ("validation/prompt_00", 4)]
    strip = np.asarray(Image.open(client.download_artifacts(run.info.run_id, previews[("validation/prompt_00", 4)])))
    assert strip.shape == (64, 8 * 96, 3)
    assert np.abs(strip[:, :96].astype(int) - frames[0].astype(int)).mean() < 8  # its first frame is the video's

    # --register_model: a version of the registered model, loadable by `generate` as models:/NAME/latest.
    (version,) = client.search_model_versions("name = 'bw-style'")
    assert version.run_id == result.mlflow_run_id and result.registered_model == "models:/bw-style/1"
    common = {"model": str(tiny_model), "prompt": PROMPT, "num_frames": 9, "height": 64, "width": 96, "steps": 2}
    registered = generate_video(out=str(tmp_path / "registered.mp4"), lora="models:/bw-style/latest",
                                tracking_uri=mlflow_server.uri, **common)
    local = generate_video(out=str(tmp_path / "local.mp4"), lora=result.output_dir, **common)
    with av.open(str(registered)) as a, av.open(str(local)) as b:
        assert np.array_equal(np.stack([f.to_ndarray(format="rgb24") for f in a.decode(video=0)]),
                              np.stack([f.to_ndarray(format="rgb24") for f in b.decode(video=0)]))


@pytest.mark.full
@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")
def test_report_to_wandb_records_the_run_offline(make_config, wandb_offline: Path) -> None:
    config = make_config(train_steps=3, checkpointing_steps=3, num_workers=1, report_to="wandb",
                         tracker_name="ray-ltx-tests", validation_prompts=[PROMPT], validation_height=64,
                         validation_width=96, validation_num_frames=9, validation_inference_steps=2)
    result = train(config)
    assert result.tracking.startswith(f"W&B run {result.mlflow_run_id} in project 'ray-ltx-tests', offline")
    records = wandb_records(wandb_offline, result.mlflow_run_id)
    assert _of(records, "run")[0]["job_type"] == "train" and _params(records)["training.train_steps"] == "3"
    history = [(h["step"]["num"], h["item"]) for h in _of(records, "history")]
    assert [step for step, item in history if "loss" in item] == [1, 2, 3]  # rank 0's writer
    assert any(step == 3 and item.get("validation/prompt_00._type") == "video-file" for step, item in history)
    (artifact,) = _of(records, "artifact")
    assert artifact["type"] == "model"
    assert {c["path"] for c in artifact["manifest"]["contents"]} == {"pytorch_lora_weights.safetensors"}
    files = {f["path"] for r in _of(records, "files") for f in r["files"]}
    assert {"config.yaml", "config/training_config.json", "cache/manifest_summary.json"} <= files
    assert [e["exit_code"] for e in _of(records, "exit")][-1] == 0
    assert _summary(records)["run_status"] == "FINISHED"


@pytest.mark.full
@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")
def test_a_failed_run_is_marked_failed_with_the_error(make_config, mlflow_server, monkeypatch) -> None:
    monkeypatch.setenv("RAY_LTX_FAULT", "nan@1")
    config = make_config(train_steps=4, checkpointing_steps=2, report_to="mlflow",
                         mlflow_tracking_uri=mlflow_server.uri, tracker_name="tracking-failures")
    with pytest.raises(TrainingDivergedError, match="step 2"):
        train(config)
    client = MlflowClient(mlflow_server.uri)
    experiment = client.get_experiment_by_name("tracking-failures")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FAILED"
    assert "non-finite loss at step 2" in run.data.tags["error"]


@pytest.mark.full
@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")
def test_unreachable_server_is_a_clear_error_before_training(make_config, tmp_path: Path) -> None:
    config = make_config(report_to="mlflow", mlflow_tracking_uri="http://127.0.0.1:9")
    with pytest.raises(TrackingError, match="unreachable"):
        train(config)
    assert not (tmp_path / "out" / "ray").exists()


def test_wandb_without_a_login_is_a_clear_error_before_training(tmp_path: Path, monkeypatch) -> None:
    import wandb

    wandb.teardown()  # W&B keeps the settings of this process's earlier (offline) runs until then
    for name in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc login either
    monkeypatch.setenv("NETRC", str(tmp_path / ".netrc"))
    with pytest.raises(TrackingError, match=r"No API key configured.*WANDB_MODE=offline"):
        tracking.check(_config(tmp_path, report_to="wandb"))


def test_register_model_takes_a_name_models_uris_can_hold() -> None:
    with pytest.raises(ConfigError, match=r"tracking\.register_model.*models:/NAME/latest"):
        build_config({"register_model": "team/lora"})
