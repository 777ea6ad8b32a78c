"""`ray-ltx demo`: the whole product end to end on the embedded default, on any laptop.

A tiny random-weight LTX-Video pipeline and a few generated sample clips stand in for the hub
model and a user's dataset; everything else is the real thing: a local Ray cluster, Ray Data
preprocessing into the latent cache, a LoRA training on Ray Train workers, a local MLflow store,
a validation video and a generation with the trained LoRA.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from ray_ltx.config import build_config

log = logging.getLogger(__name__)

DEMO_BUCKETS = ["9x64x96", "17x64x96"]
DEMO_PROMPT = "DEMO_STYLE A red circle moves from left to right across a plain black background."


def run_demo(workdir: Path, train_steps: int = 20, num_workers: int = 2) -> Path:
    from ray_ltx.data.samples import write_sample_dataset
    from ray_ltx.generate import generate_video
    from ray_ltx.model.tiny import write_pipeline
    from ray_ltx.train.driver import train

    started = time.monotonic()
    workdir = workdir.absolute()
    model_dir, data_dir, output_dir = workdir / "tiny-ltx-video", workdir / "data", workdir / "output"
    print(f"[1/4] writing a tiny LTX-Video pipeline (random weights) to {model_dir}")
    if not (model_dir / "model_index.json").is_file():
        write_pipeline(model_dir)
    print(f"[2/4] writing sample clips (finetrainers layout) to {data_dir}")
    if not (data_dir / "videos.txt").is_file():
        write_sample_dataset(data_dir, num_clips=8)
    config = build_config({
        "pretrained_model_name_or_path": str(model_dir),
        "data_root": str(data_dir),
        "id_token": "DEMO_STYLE",
        "video_resolution_buckets": DEMO_BUCKETS,
        "transformer_dtype": "fp32",
        "vae_dtype": "fp32",
        "text_encoder_dtype": "fp32",
        "training_type": "lora",
        "rank": 16,
        "lora_alpha": 16,
        "lr": 1e-3,
        "train_steps": train_steps,
        "checkpointing_steps": max(1, train_steps // 2),
        "checkpointing_limit": 2,
        "holdout_samples": 1,
        "num_workers": num_workers,
        "validation_prompts": [DEMO_PROMPT],
        "validation_height": 64,
        "validation_width": 96,
        "validation_num_frames": 9,
        "validation_inference_steps": 4,
        "output_dir": str(output_dir),
        "overwrite_output_dir": True,
        "tracker_name": "ray-ltx-demo",
        "mlflow_tracking_uri": f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}",
    })
    print(f"[3/4] preprocessing and training a LoRA on {num_workers} Ray Train workers")
    result = train(config)
    print("[4/4] generating a video with the trained LoRA")
    video = generate_video(
        model=str(model_dir), lora=str(output_dir), lora_scale=1.0, prompt=DEMO_PROMPT, num_frames=9,
        height=64, width=96, steps=4, seed=0, out=str(workdir / "demo_lora.mp4"),
    )
    print()
    print(f"ray-ltx demo finished in {time.monotonic() - started:.0f} s")
    print(f"  LoRA weights:     {output_dir / 'pytorch_lora_weights.safetensors'}")
    print(f"  generated video:  {video}")
    print(f"  latent cache:     {config.cache_dir}")
    print(f"  MLflow run:       {result.mlflow_run_id}")
    print(f"  browse it:        mlflow ui --backend-store-uri sqlite:///{workdir / 'mlruns' / 'mlflow.db'}")
    return output_dir
