#!/usr/bin/env python
"""Multi-GPU scaling of ray-ltx on one host: training throughput and memory per GPU, preprocessing rate.

For each GPU count (default 1, 2, 4, 8, capped at the GPUs present) it runs the real training entry point
(``ray_ltx.train.driver.train``: Ray Train, one worker per GPU, NCCL, Ray Data reading a synthetic latent
cache of 49x512x768 clips, bf16, full-size random-weight LTX-Video transformer) for:

- ``lora_ddp``: LoRA r128 on to_q,to_k,to_v,to_out.0, plain DDP, compiled blocks;
- ``full_zero2`` / ``full_zero3``: full finetune with DeepSpeed ZeRO-2 / ZeRO-3, gradient checkpointing;
- ``full_fsdp``: full finetune with torch FSDP2 (bf16 params, fp32 reduce), gradient checkpointing, compiled blocks.

and records samples/s (global: batch x workers / median step time), scaling efficiency against the 1-GPU
run of the same config in the same call (samples/s at N / (N x samples/s at 1)) and rank 0's max memory
reserved. With ``--preprocess`` it also runs ``preprocess_bench.py`` restricted to the first N GPUs
(``CUDA_VISIBLE_DEVICES``), whose defaults place two VAE + two T5 encoder actors per GPU, and records clips/s.

Goals (the scaling issue): efficiency >= 90% at 4 GPUs and >= 85% at 8; ZeRO-3 full finetune under 8 GiB
per GPU at 8 GPUs; preprocessing linear in GPUs until decoding saturates the CPUs.

Usage (a multi-GPU machine):  python benchmarks/scaling_bench.py --out benchmarks/results/scaling_h200x8.json
CPU smoke test:               python benchmarks/scaling_bench.py --tiny --gpus 1,2 --out /tmp/scaling_tiny.json
(NVLink multicast stays off: NCCL_NVLS_ENABLE=0 is set for the workers unless already set.)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, Deadline, environment, write_json  # noqa: E402
from train_bench import run_ray_ltx, write_model_dir, write_synthetic_cache  # noqa: E402

CONFIGS: dict[str, dict[str, Any]] = {
    "lora_ddp": {"training_type": "lora", "gradient_checkpointing": False, "compile": True,
                 "optimizer": "adamw_fused", "overrides": {"backend": "ddp"}},
    "full_zero2": {"training_type": "full-finetune", "gradient_checkpointing": True, "compile": True,
                   "optimizer": "adamw", "overrides": {"backend": "deepspeed", "deepspeed_stage": 2}},
    "full_zero3": {"training_type": "full-finetune", "gradient_checkpointing": True, "compile": False,
                   "optimizer": "adamw", "overrides": {"backend": "deepspeed", "deepspeed_stage": 3}},
    "full_fsdp": {"training_type": "full-finetune", "gradient_checkpointing": True, "compile": True,
                  "optimizer": "adamw_fused", "overrides": {"backend": "fsdp"}},
}
GOALS = {"efficiency_at_4": 0.90, "efficiency_at_8": 0.85, "zero3_max_reserved_gib_at_8": 8.0}


def train_point(name: str, gpus: int, batch: int, steps: int, warmup: int, model_dir: Path, cache_dir: Path,
                work: Path, size: str) -> dict[str, Any]:
    spec = CONFIGS[name]
    tiny = size == "tiny"
    run = {"name": f"{name}_x{gpus}", "training_type": spec["training_type"], "batch": batch,
           "gradient_checkpointing": spec["gradient_checkpointing"], "compile": spec["compile"] and not tiny,
           "optimizer": "adamw" if tiny else spec["optimizer"], "steps": steps, "warmup": warmup,
           "overrides": {**spec["overrides"], "num_workers": gpus}}
    entry = run_ray_ltx(run, model_dir, cache_dir, work, size)
    times = entry.pop("step_times_s", [])
    entry.pop("memory_report", None)
    if times:
        median = statistics.median(times)
        entry["s_per_step_median"] = round(median, 4)
        entry["samples_per_s"] = round(batch * gpus / median, 3)
    entry.update(gpus=gpus, batch_per_gpu=batch)
    return entry


def preprocess_point(gpus: int, work: Path, tiny: bool, clips: int, timeout: float) -> dict[str, Any]:
    out = work / f"preprocess_x{gpus}.json"
    env = dict(os.environ)
    if not tiny:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in range(gpus))
    command = [sys.executable, str(REPO / "benchmarks" / "preprocess_bench.py"), "--variants", "default",
               "--out", str(out), "--workdir", str(work / f"pre-{gpus}"), "--clips", str(clips)]
    if tiny:
        command.append("--tiny")
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0 or not out.exists():
        return {"error": f"exit {proc.returncode}", "log_tail": (proc.stderr or proc.stdout)[-3000:]}
    report = json.loads(out.read_text())
    entry = report.get("ray_ltx", report.get("variants", {})).get("default", report)
    return {"gpus": gpus, "command": " ".join(command), "result": entry, "bare": report.get("bare"),
            "decode_rate": report.get("decode_rate"), "start": report.get("start"), "cpus": os.cpu_count()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny model, CPU workers on gloo: a smoke test")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "scaling.json"))
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--gpus", default="1,2,4,8", help="worker counts (capped at the GPUs present)")
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"of {', '.join(CONFIGS)}")
    parser.add_argument("--batch", type=int, default=None, help="micro-batch per GPU (default 2; tiny 1)")
    parser.add_argument("--steps", type=int, default=None, help="steps per run (default 40; tiny 4)")
    parser.add_argument("--preprocess", action="store_true", help="also the preprocessing rate per GPU count")
    parser.add_argument("--clips", type=int, default=None, help="clips per preprocessing run (default 64 x GPUs)")
    parser.add_argument("--budget_s", type=float, default=560, help="stop starting runs after this")
    args = parser.parse_args()

    tiny = args.tiny
    size = "tiny" if tiny else "full"
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    if tiny:
        os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
        available = os.cpu_count() or 1
    else:
        import torch

        available = torch.cuda.device_count()
    counts = [n for n in (int(x) for x in args.gpus.split(",")) if n <= max(1, available)]
    batch = args.batch or (1 if tiny else 2)
    steps = args.steps or (4 if tiny else 40)
    warmup = 1 if tiny else 10
    deadline = Deadline(args.budget_s)
    out = Path(args.out)
    report: dict[str, Any] = {
        "benchmark": "scaling_bench", "size": size, "environment": environment(),
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]), "goals": GOALS,
        "gpus_present": available, "batch_per_gpu": batch, "steps": steps, "warmup_steps_excluded": warmup,
        "train": {}, "preprocess": {},
    }
    work = Path(args.workdir or tempfile.mkdtemp(prefix="scaling-bench-"))
    model_dir, cache_dir = work / "model", work / "cache"
    if not (model_dir / "transformer").exists():
        write_model_dir(model_dir, size)
    write_synthetic_cache(model_dir, cache_dir, size, samples=max(32, batch * max(counts) * 4))

    for name in filter(None, args.configs.split(",")):
        points = report["train"].setdefault(name, {})
        for gpus in counts:
            if deadline.left() < (30 if tiny else 240):
                points[str(gpus)] = {"error": "skipped: out of time"}
                continue
            print(f"== {name} on {gpus} {'worker' if tiny else 'GPU'}(s)", flush=True)
            try:
                points[str(gpus)] = train_point(name, gpus, batch, steps, warmup, model_dir, cache_dir, work, size)
            except Exception as error:  # noqa: BLE001 - record it and go on
                points[str(gpus)] = {"error": f"{type(error).__name__}: {error}"[:3000]}
            one = points.get("1", {}).get("samples_per_s")
            here = points[str(gpus)].get("samples_per_s")
            if one and here:
                points[str(gpus)]["efficiency_vs_1"] = round(here / (gpus * one), 3)
            print(json.dumps({k: v for k, v in points[str(gpus)].items() if k != "command"}), flush=True)
            write_json(out, report)
            shutil.rmtree(work / "runs", ignore_errors=True)

    if args.preprocess:
        for gpus in counts:
            if deadline.left() < 120:
                report["preprocess"][str(gpus)] = {"error": "skipped: out of time"}
                continue
            clips = args.clips or (8 if tiny else 64 * gpus)
            print(f"== preprocess on {gpus} GPU(s), {clips} clips", flush=True)
            report["preprocess"][str(gpus)] = preprocess_point(gpus, work, tiny, clips, max(60.0, deadline.left()))
            write_json(out, report)

    report["goals_met"] = goals_met(report)
    write_json(out, report)
    print_table(report)
    return 0


def goals_met(report: dict[str, Any]) -> dict[str, Any]:
    met: dict[str, Any] = {}
    for name, points in report["train"].items():
        for gpus, goal in (("4", GOALS["efficiency_at_4"]), ("8", GOALS["efficiency_at_8"])):
            value = points.get(gpus, {}).get("efficiency_vs_1")
            met[f"{name}_efficiency_at_{gpus}"] = {"value": value, "goal": goal,
                                                   "met": None if value is None else value >= goal}
    value = report["train"].get("full_zero3", {}).get("8", {}).get("max_memory_reserved_gib")
    met["zero3_max_reserved_gib_at_8"] = {"value": value, "goal": GOALS["zero3_max_reserved_gib_at_8"],
                                          "met": None if value is None else value < GOALS["zero3_max_reserved_gib_at_8"]}
    return met


def print_table(report: dict[str, Any]) -> None:
    print("\n| config | GPUs | s/step | samples/s | efficiency vs 1 | max reserved GiB (rank 0) |")
    print("|---|---|---|---|---|---|")
    for name, points in report["train"].items():
        for gpus, e in points.items():
            if "error" in e:
                print(f"| {name} | {gpus} | error: {e['error'][:80]} | | | |")
                continue
            print(f"| {name} | {gpus} | {e.get('s_per_step_median')} | {e.get('samples_per_s')} | "
                  f"{e.get('efficiency_vs_1', '')} | {e.get('max_memory_reserved_gib')} |")
    for gpus, e in report["preprocess"].items():
        print(f"preprocess x{gpus}: {json.dumps(e.get('result', e))[:300]}")
    print("goals:", json.dumps(report["goals_met"]))


if __name__ == "__main__":
    sys.exit(main())
