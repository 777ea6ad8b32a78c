"""Inference: `ray-ltx generate` with and without a LoRA, seeds, batch mode, MLflow-hosted LoRAs, ComfyUI export."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from ray_ltx.generate import generate_batch, generate_video
from ray_ltx.model.lora import COMFYUI_WEIGHTS, export_comfyui
from ray_ltx.train.driver import train

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_cluster")]
PROMPT = "BW_STYLE A red circle moves from left to right across a plain black background."


def _read(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


@pytest.fixture(scope="module")
def trained_lora(tiny_model: Path, sample_data: Path, shared_cache: Path, tmp_path_factory) -> tuple[Path, str, str]:
    from conftest import base_config

    out = tmp_path_factory.mktemp("lora-run") / "out"
    uri = f"sqlite:///{out.parent / 'mlruns.db'}"
    result = train(base_config(tiny_model, sample_data, out, cache_dir=str(shared_cache), train_steps=4, lr=5e-3,
                               report_to="mlflow", mlflow_tracking_uri=uri))
    return out, result.mlflow_run_id, uri


@pytest.mark.full
def test_lora_changes_frames_and_seeds_repeat(tiny_model: Path, trained_lora, tmp_path: Path) -> None:
    lora_dir, _, _ = trained_lora
    common = {"model": str(tiny_model), "prompt": PROMPT, "num_frames": 9, "height": 64, "width": 96, "steps": 2}
    base = _read(generate_video(out=str(tmp_path / "base.mp4"), **common))
    with_lora = _read(generate_video(out=str(tmp_path / "lora.mp4"), lora=str(lora_dir), lora_scale=0.75, **common))
    again = _read(generate_video(out=str(tmp_path / "lora2.mp4"), lora=str(lora_dir), lora_scale=0.75, **common))
    assert base.shape == (9, 64, 96, 3)
    assert np.abs(base.astype(int) - with_lora.astype(int)).mean() > 0.5
    assert np.array_equal(with_lora, again)


@pytest.mark.full
def test_generate_cli_with_a_lora_from_mlflow(tiny_model: Path, trained_lora, tmp_path: Path, monkeypatch) -> None:
    _, run_id, uri = trained_lora
    out = tmp_path / "from_mlflow.mp4"
    result = subprocess.run(
        [sys.executable, "-m", "ray_ltx", "generate", "--model", str(tiny_model), "--lora", f"runs:/{run_id}/weights",
         "--lora_scale", "0.75", "--prompt", PROMPT, "--num_frames", "9", "--height", "64", "--width", "96",
         "--steps", "2", "--out", str(out)],
        capture_output=True, text=True, timeout=300, env={**__import__("os").environ, "MLFLOW_TRACKING_URI": uri})
    assert result.returncode == 0, result.stderr[-2000:]
    assert _read(out).shape == (9, 64, 96, 3)


@pytest.mark.full
def test_batch_mode_spreads_prompts_with_ray_data(tiny_model: Path, tmp_path: Path) -> None:
    prompts = ["a red circle", "a blue square", "a green triangle"]
    options = {"model": str(tiny_model), "lora": None, "lora_scale": 1.0, "dtype": None, "negative_prompt": "",
               "num_frames": 9, "height": 64, "width": 96, "steps": 2, "guidance_scale": 3.0, "seed": 0, "fps": 24,
               "out": str(tmp_path / "batch")}
    rows = generate_batch(prompts, options, num_gpus=0)
    assert [r["prompt"] for r in rows] == prompts
    assert all(_read(Path(r["path"])).shape == (9, 64, 96, 3) for r in rows)


@pytest.mark.full
def test_comfyui_export_round_trips(tiny_model: Path, trained_lora, tmp_path: Path) -> None:
    from diffusers import LTXPipeline
    from safetensors import safe_open

    lora_dir, _, _ = trained_lora
    path = export_comfyui(lora_dir, tmp_path / COMFYUI_WEIGHTS)
    with safe_open(str(path), framework="pt") as handle:
        keys = list(handle.keys())
    assert keys and all(k.startswith("diffusion_model.transformer_blocks.") for k in keys)
    assert any(k.endswith(".lora_A.weight") for k in keys) and any(k.endswith(".lora_B.weight") for k in keys)
    pipe = LTXPipeline.from_pretrained(tiny_model)

    def frames():
        return pipe(PROMPT, num_frames=9, height=64, width=96, num_inference_steps=2,
                    generator=torch.Generator().manual_seed(0), output_type="pt").frames

    pipe.load_lora_weights(str(lora_dir), adapter_name="diffusers")
    expected = frames()
    pipe.unload_lora_weights()
    pipe.load_lora_weights(str(path), adapter_name="comfyui")  # re-imported from the ComfyUI layout
    assert torch.allclose(frames(), expected, atol=1e-5)


@pytest.mark.full
def test_every_checkpoint_holds_a_loadable_lora_and_export_copies_it(tiny_model: Path, trained_lora,
                                                                     tmp_path: Path) -> None:
    from diffusers import LTXPipeline

    lora_dir, _, _ = trained_lora
    mid = lora_dir / "ray" / "train" / "checkpoint_00000002" / "lora"
    assert (mid / "pytorch_lora_weights.safetensors").is_file() and (mid / COMFYUI_WEIGHTS).is_file()
    result = subprocess.run([sys.executable, "-m", "ray_ltx", "export", str(lora_dir), "--step", "2", "--out",
                             str(tmp_path / "step2")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    common = {"prompt": PROMPT, "num_frames": 9, "height": 64, "width": 96, "num_inference_steps": 2,
              "output_type": "np"}

    def frames(lora: Path) -> np.ndarray:
        pipe = LTXPipeline.from_pretrained(tiny_model)
        pipe.load_lora_weights(str(lora))
        return pipe(generator=torch.Generator().manual_seed(0), **common).frames[0]

    step2, final = frames(tmp_path / "step2"), frames(lora_dir)
    assert (tmp_path / "step2" / COMFYUI_WEIGHTS).is_file()
    assert np.abs(step2 - final).mean() > 1e-4  # the step-2 weights, not the final ones
    missing = subprocess.run([sys.executable, "-m", "ray_ltx", "export", str(lora_dir), "--step", "3", "--out",
                              str(tmp_path / "none")], capture_output=True, text=True, timeout=300)
    assert missing.returncode == 5 and "no checkpoint of step 3" in missing.stderr and "2, 4" in missing.stderr
