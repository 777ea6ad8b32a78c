"""Soak run: hundreds of tiny steps with checkpoints and validation; memory and open files must stay flat.

    python benchmarks/soak.py --steps 300 --out benchmarks/results/soak_cpu.json

Trains the tiny model on the sample clips (CPU is enough) and reads rank 0's per-step
``process_rss_gib`` and ``open_files`` back from MLflow. Flat means: the mean of the last third of
the run is within 10% (memory) / 2 files of the mean of the middle third (the first third holds the
warm-up: compilation caches, the first checkpoint and validation).
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--out", default="benchmarks/results/soak_cpu.json")
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()

    from mlflow.tracking import MlflowClient

    from ray_ltx.config import build_config
    from ray_ltx.data.samples import write_sample_dataset
    from ray_ltx.model.tiny import write_pipeline
    from ray_ltx.train.driver import train

    work = Path(args.workdir or tempfile.mkdtemp(prefix="ray-ltx-soak-"))
    model, data = write_pipeline(work / "model"), write_sample_dataset(work / "data", num_clips=6)
    uri = f"sqlite:///{work / 'mlruns.db'}"
    config = build_config({
        "pretrained_model_name_or_path": str(model), "data_root": str(data),
        "video_resolution_buckets": ["9x64x96", "17x64x96"], "transformer_dtype": "fp32", "vae_dtype": "fp32",
        "text_encoder_dtype": "fp32", "rank": 8, "lora_alpha": 8, "lr": 1e-4, "num_workers": 2,
        "train_steps": args.steps, "checkpointing_steps": max(1, args.steps // 6), "checkpointing_limit": 2,
        "validation_prompts": ["a red circle moves right"], "validation_steps": max(1, args.steps // 3),
        "validation_height": 64, "validation_width": 96, "validation_num_frames": 9,
        "validation_inference_steps": 2, "holdout_samples": 1, "output_dir": str(work / "out"),
        "mlflow_tracking_uri": uri, "tracker_name": "soak", "log_system_metrics": False,
    })
    started = time.monotonic()
    result = train(config)
    seconds = time.monotonic() - started
    client = MlflowClient(uri)
    series = {}
    for key in ("process_rss_gib", "open_files", "step_time_s"):
        history = sorted(client.get_metric_history(result.mlflow_run_id, key), key=lambda m: m.step)
        series[key] = [m.value for m in history]

    def third(values: list[float], index: int) -> float:
        n = len(values) // 3
        chunk = values[index * n : (index + 1) * n] or values
        return sum(chunk) / len(chunk)

    rss_mid, rss_end = third(series["process_rss_gib"], 1), third(series["process_rss_gib"], 2)
    files_mid, files_end = third(series["open_files"], 1), third(series["open_files"], 2)
    figures = {
        "steps": {"value": result.steps, "unit": "steps"},
        "checkpoints_written": {"value": args.steps // config.training.checkpointing_steps, "unit": "checkpoints"},
        "validations": {"value": len(list((work / "out" / "validation").rglob("*.mp4"))), "unit": "videos"},
        "wall_time": {"value": round(seconds, 1), "unit": "s"},
        "rss_middle_third": {"value": round(rss_mid, 4), "unit": "GiB"},
        "rss_last_third": {"value": round(rss_end, 4), "unit": "GiB"},
        "rss_growth": {"value": round((rss_end - rss_mid) / rss_mid * 100, 2), "unit": "%"},
        "open_files_middle_third": {"value": round(files_mid, 1), "unit": "files"},
        "open_files_last_third": {"value": round(files_end, 1), "unit": "files"},
        "rss_max": {"value": round(max(series["process_rss_gib"]), 4), "unit": "GiB"},
    }
    flat = rss_end <= rss_mid * 1.10 and files_end <= files_mid + 2
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    record = {
        "name": "soak_cpu", "device": "CPU (2 Ray Train workers on gloo, tiny model)",
        "date": datetime.date.today().isoformat(), "git_commit": commit,
        "command": f"python benchmarks/soak.py --steps {args.steps}", "figures": figures, "flat": flat,
        "series_every_10th_step": {k: v[::10] for k, v in series.items()},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(figures, indent=2))
    print(f"memory and open files flat: {flat} -> {args.out}")
    if not flat:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
