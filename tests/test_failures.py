"""Failures that must not cost the run its weights or its time: non-finite gradients, deterministic errors
(never retried), a validation that breaks at the end. Each test proves its fault fired."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file

from ray_ltx.errors import OutOfMemoryError, TrainingDivergedError
from ray_ltx.train.driver import latest_checkpoint, train

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_cluster")]


def _fired(out: Path, kind: str) -> list[Path]:
    return list((out / "ray" / "train").glob(f".fault-{kind}-*.fired"))


def _finite(path: Path) -> bool:
    return all(torch.isfinite(t).all() for t in load_file(path).values())


def test_an_infinite_gradient_with_a_finite_loss_is_skipped_and_never_reaches_the_weights(
        make_config, tmp_path: Path, monkeypatch) -> None:
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    monkeypatch.setenv("RAY_LTX_FAULT", "infgrad@1")  # step 2: finite loss, infinite gradients
    result = train(make_config(train_steps=4, checkpointing_steps=2, nan_policy="skip", report_to="mlflow",
                               mlflow_tracking_uri=uri))
    out = Path(result.output_dir)
    assert _fired(out, "infgrad")
    assert result.steps == 4
    client = MlflowClient(uri)
    assert max(m.value for m in client.get_metric_history(result.mlflow_run_id, "skipped_steps")) == 1
    assert 2 not in [m.step for m in client.get_metric_history(result.mlflow_run_id, "loss")]
    # the checkpoint right after the skipped step is written (and clean), as is the final LoRA
    step2 = out / "ray" / "train" / "checkpoint_00000002"
    assert _finite(step2 / "lora" / "pytorch_lora_weights.safetensors")
    assert _finite(out / "pytorch_lora_weights.safetensors")


def test_an_infinite_gradient_stops_the_run_at_once_without_retries(make_config, monkeypatch) -> None:
    monkeypatch.setenv("RAY_LTX_FAULT", "infgrad@2")  # fires once: a retry would get past it
    config = make_config(train_steps=6, checkpointing_steps=2, max_failures=3)
    with pytest.raises(TrainingDivergedError, match="non-finite gradients at step 3.*checkpoint_00000002"):
        train(config)
    out = Path(config.output_dir)
    assert _fired(out, "infgrad")
    path, state = latest_checkpoint(str(out / "ray" / "train"))
    assert state.step == 2  # nothing after the poisoned step was saved, and no retry trained on
    assert _finite(Path(path) / "lora" / "pytorch_lora_weights.safetensors")


def test_out_of_memory_names_the_knobs_and_is_not_retried(make_config, monkeypatch) -> None:
    monkeypatch.setenv("RAY_LTX_FAULT", "oom@1:1")
    config = make_config(train_steps=4, checkpointing_steps=2, max_failures=3)
    started = time.monotonic()
    with pytest.raises(OutOfMemoryError) as error:
        train(config)
    message = str(error.value)
    assert "out of memory on rank 1" in message and "--batch_size" in message and "--gradient_checkpointing" in message
    assert _fired(Path(config.output_dir), "oom")
    assert latest_checkpoint(str(Path(config.output_dir) / "ray" / "train")) is None  # stopped at step 2
    assert time.monotonic() - started < 600


def test_a_validation_that_breaks_at_the_end_keeps_the_final_weights(make_config, tmp_path: Path, caplog) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("BW_STYLE a red circle\n")
    config = make_config(train_steps=6, checkpointing_steps=2, validation_prompts_file=str(prompts),
                         validation_num_frames=9, validation_height=64, validation_width=96,
                         validation_inference_steps=1)
    out = Path(config.output_dir)

    def break_validation() -> None:  # the prompts file goes away while the run trains
        deadline = time.monotonic() + 600
        while latest_checkpoint(str(out / "ray" / "train")) is None and time.monotonic() < deadline:
            time.sleep(0.2)
        prompts.unlink()

    breaker = threading.Thread(target=break_validation, daemon=True)
    breaker.start()
    with caplog.at_level("WARNING"):
        result = train(config)
    breaker.join(timeout=60)
    assert not prompts.exists()
    assert result.steps == 6 and (out / "pytorch_lora_weights.safetensors").is_file()
    assert "validation at step 6 failed" in caplog.text and "the final weights are saved" in caplog.text
