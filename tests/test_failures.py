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

from ray_ltx.errors import CheckpointError, OutOfMemoryError, TrainingDivergedError
from ray_ltx.train.checkpoint import latest_checkpoint
from ray_ltx.train.driver import train

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_cluster")]


def _fired(out: Path, kind: str) -> list[Path]:
    return list((out / "ray" / "train").glob(f".fault-{kind}-*.fired"))


def _finite(path: Path) -> bool:
    return all(torch.isfinite(t).all() for t in load_file(path).values())


@pytest.mark.full
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


@pytest.mark.full
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


@pytest.mark.full
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


@pytest.mark.full
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


@pytest.mark.full
def test_a_damaged_cache_is_reported_then_recovered(tiny_model: Path, sample_data: Path, tmp_path: Path) -> None:
    import json

    from conftest import base_config
    from ray_ltx.data import cache as cache_lib
    from ray_ltx.data.pipeline import ensure_cache, preprocess
    from ray_ltx.errors import CacheError

    cache = tmp_path / "cache"
    config = base_config(tiny_model, sample_data, tmp_path / "out", cache_dir=str(cache),
                         video_resolution_buckets=["9x64x96"])
    manifest = preprocess(config)
    shard = cache / manifest.shards[0].path
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])  # a torn copy
    without_data = base_config(tiny_model, None, tmp_path / "out", cache_dir=str(cache),
                               video_resolution_buckets=["9x64x96"])
    with pytest.raises(CacheError, match="1 damaged or missing shard"):
        ensure_cache(without_data)
    again = preprocess(config)  # the damaged shard is passed over and its samples encoded again
    assert again.num_samples == manifest.num_samples
    assert again.stats["encoded"] == sum(sid is not None for sid in manifest.shards[0].sample_ids)
    ensure_cache(without_data)

    data = json.loads((cache / cache_lib.MANIFEST).read_text())
    del data["shards"]
    (cache / cache_lib.MANIFEST).write_text(json.dumps(data))
    with pytest.raises(CacheError, match="manifest is damaged.*--rebuild_cache"):
        ensure_cache(without_data)
    rebuilt = preprocess(base_config(tiny_model, sample_data, tmp_path / "out", cache_dir=str(cache),
                                     video_resolution_buckets=["9x64x96"], rebuild_cache=True))
    assert rebuilt.num_samples == manifest.num_samples


@pytest.mark.full
def test_a_damaged_checkpoint_is_passed_over_for_the_one_before(make_config) -> None:
    config = make_config(train_steps=4, checkpointing_steps=2)
    train(config)
    run = Path(config.output_dir) / "ray" / "train"
    weights = run / "checkpoint_00000004" / "trainable.safetensors"
    data = bytearray(weights.read_bytes())
    data[8:24] = b"\xff" * 16  # same size, unreadable header
    weights.write_bytes(bytes(data))
    listing = run / "checkpoint_00000002" / "complete-rank0.json"
    kept = listing.read_text()
    listing.write_text(kept[: len(kept) // 2])  # a torn listing is never a traceback
    assert latest_checkpoint(str(run))[1].step == 4  # the torn listing of checkpoint 2 is passed over, quietly
    listing.write_text(kept)
    resume = make_config(train_steps=6, checkpointing_steps=2, resume_from_checkpoint="latest", max_failures=2)
    with pytest.raises(CheckpointError, match="checkpoint_00000004 did not load.*marked damaged.*checkpoint_00000002"):
        train(resume)
    assert latest_checkpoint(str(run))[1].step == 2
    result = train(resume)
    assert result.steps == 6
