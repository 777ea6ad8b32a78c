"""MLflow: a run's params, metrics, tables and artifacts read back through MlflowClient."""

from __future__ import annotations

import json
from pathlib import Path

import av
import pytest
from mlflow.tracking import MlflowClient

from ray_ltx.errors import TrackingError, TrainingDivergedError
from ray_ltx.train.driver import train

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_cluster")]


def _artifacts(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    found = set()
    for item in client.list_artifacts(run_id, path):
        found |= _artifacts(client, run_id, item.path) if item.is_dir else {item.path}
    return found


def test_run_against_a_tracking_server_holds_everything(make_config, mlflow_server, tmp_path: Path) -> None:
    config = make_config(train_steps=4, checkpointing_steps=2, report_to="mlflow",
                         mlflow_tracking_uri=mlflow_server.uri, tracker_name="tracking-test",
                         validation_prompts=["BW_STYLE a red circle moves right"], validation_steps=2,
                         validation_height=64, validation_width=96, validation_num_frames=9,
                         validation_inference_steps=2, holdout_samples=1)
    result = train(config)
    client = MlflowClient(mlflow_server.uri)
    run = client.get_run(result.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["training.rank"] == "8" and run.data.params["optimizer.lr"] == "0.001"
    assert run.data.params["version.ray"].startswith("2.60") and "version.diffusers" in run.data.params
    assert run.data.params["cluster.workers"] == "2"
    assert run.data.tags["training_type"] == "lora" and run.data.tags["model_id"] == config.model.pretrained_model_name_or_path
    loss_steps = [m.step for m in client.get_metric_history(run.info.run_id, "loss")]
    assert sorted(loss_steps) == [1, 2, 3, 4]  # two workers, one value per step
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


def test_unreachable_server_is_a_clear_error_before_training(make_config, tmp_path: Path) -> None:
    config = make_config(report_to="mlflow", mlflow_tracking_uri="http://127.0.0.1:9")
    with pytest.raises(TrackingError, match="unreachable"):
        train(config)
    assert not (tmp_path / "out" / "ray").exists()
