#!/usr/bin/env python
"""An elastic run losing a worker: seconds from the kill to the next training step, throughput before and after.

It trains the real entry point (``python -m ray_ltx train``, a private local Ray, a synthetic latent cache of
49x512x768 clips, the full-size random-weight LTX-Video transformer, LoRA r128, bf16) with
``--num_workers 1:2`` on two GPUs, waits until both workers have trained ``--kill_after`` steps, SIGKILLs one
worker process (``--kill_rank``), and follows the run to its end through the per-step sample log every worker
writes (``RAY_LTX_SAMPLE_LOG``: time, step, rank, world size, pid). On one host the killed worker's GPU is free
again at once, so Ray Train restarts the group at 2 workers from the latest checkpoint; on a cluster that lost
the node it restarts at 1.

Recorded: the step reached and the checkpoint resumed from (steps lost), seconds from the kill to the next
step the new group finished and to its first step beyond the one reached before the kill, the group sizes
seen, and samples/s over the steps before the kill and after the new group caught up.

Usage (two GPUs):  python benchmarks/elastic_bench.py --out benchmarks/results/elastic_h200x2.json
CPU smoke test:    python benchmarks/elastic_bench.py --tiny --out /tmp/elastic_tiny.json
(NVLink multicast stays off: NCCL_NVLS_ENABLE=0 is set for the workers unless already set.)
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, environment, write_json  # noqa: E402
from train_bench import RANK, SHAPES, TARGET_MODULES, write_model_dir, write_synthetic_cache  # noqa: E402


def read_records(directory: Path) -> list[dict[str, Any]]:
    records = []
    for path in directory.glob("samples-rank*.jsonl"):
        for line in path.read_text().splitlines():
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    pass  # a line being written
    return sorted(records, key=lambda r: r["time"])


def samples_per_s(rank0: list[dict[str, Any]], samples_per_step: int) -> float | None:
    """Global samples/s over consecutive steps of one worker group (rank 0's records)."""
    if len(rank0) < 2:
        return None
    gaps = [b["time"] - a["time"] for a, b in zip(rank0, rank0[1:], strict=False) if b["step"] == a["step"] + 1]
    return round(samples_per_step / statistics.median(gaps), 3) if gaps else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--tiny", action="store_true", help="the tiny model on CPU workers (a smoke test)")
    parser.add_argument("--steps", type=int, default=None, help="train steps [default: 120, tiny 30]")
    parser.add_argument("--kill_after", type=int, default=None, help="kill once both workers trained this many "
                        "steps [default: 45, tiny 12]")
    parser.add_argument("--kill_rank", type=int, default=1)
    parser.add_argument("--checkpointing_steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--compile", action="store_true", help="compile the transformer blocks")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--timeout", type=float, default=3000.0)
    args = parser.parse_args()

    size = "tiny" if args.tiny else "full"
    steps = args.steps or (30 if args.tiny else 120)
    kill_after = args.kill_after or (12 if args.tiny else 45)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="elastic-bench-"))
    model_dir, cache_dir, sample_log = work / "model", work / "cache", work / "samples"
    if not (model_dir / "transformer").exists():
        write_model_dir(model_dir, size)
    if not (cache_dir / "manifest.json").exists():
        write_synthetic_cache(model_dir, cache_dir, size, samples=64)
    flags = ["--pretrained_model_name_or_path", str(model_dir), "--cache_dir", str(cache_dir),
             "--video_resolution_buckets", SHAPES[size]["bucket"], "--output_dir", str(work / "out"),
             "--overwrite_output_dir", "--num_workers", "1:2", "--max_failures", "3",
             "--train_steps", str(steps), "--checkpointing_steps", str(args.checkpointing_steps),
             "--batch_size", str(args.batch), "--rank", str(8 if args.tiny else RANK),
             "--lora_alpha", str(8 if args.tiny else RANK), "--target_modules", *TARGET_MODULES,
             "--report_to", "none", "--ray_address", "local", "--no-log_system_metrics"]
    if args.tiny:
        flags += ["--no-use_gpu", "--transformer_dtype", "fp32"]
    else:
        flags += ["--use_gpu", "--transformer_dtype", "bf16", "--optimizer", "adamw_fused"]
    if args.compile:
        flags.append("--compile")
    env = {**os.environ, "RAY_LTX_SAMPLE_LOG": str(sample_log), "NCCL_NVLS_ENABLE": os.environ.get(
        "NCCL_NVLS_ENABLE", "0")}
    command = [sys.executable, "-m", "ray_ltx", "train", *flags]
    log_path = work / "driver.log"
    report: dict[str, Any] = {"benchmark": "elastic", "size": size, "environment": environment(),
                              "command": " ".join(["python", "-m", "ray_ltx", "train", *flags]),
                              "train_steps": steps, "kill_rank": args.kill_rank}
    deadline = time.monotonic() + args.timeout
    with open(log_path, "w") as log:
        driver = subprocess.Popen(command, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        try:
            while True:  # both workers at work, past kill_after
                records = read_records(sample_log)
                victims = [r for r in records if r["rank"] == args.kill_rank and r["world_size"] == 2]
                if victims and victims[-1]["step"] >= kill_after:
                    break
                if driver.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the run never trained {kill_after} steps on 2 workers "
                                       f"(exit {driver.returncode}):\n{log_path.read_text()[-4000:]}")
                time.sleep(0.05)
            reached = max(r["step"] for r in records)
            killed_at = time.time()
            os.kill(victims[-1]["pid"], signal.SIGKILL)
            code = driver.wait(timeout=max(1.0, deadline - time.monotonic()))
        finally:
            if driver.poll() is None:
                driver.kill()
    records = read_records(sample_log)
    before = [r for r in records if r["time"] <= killed_at]
    after = [r for r in records if r["time"] > killed_at]
    rank0_before = [r for r in before if r["rank"] == 0 and r["world_size"] == 2][-20:]
    rank0_after = [r for r in after if r["rank"] == 0]
    resumed = rank0_after[0]["step"] - 1 if rank0_after else None
    new_progress = next((r for r in rank0_after if r["step"] > reached), None)
    caught_up = [r for r in rank0_after if r["step"] > reached]
    per_step = args.batch * 2  # gradient_accumulation_steps 1 x MAX 2 workers
    report.update({
        "driver_exit_code": code,
        "kill_after_step": kill_after,
        "step_reached_before_kill": reached,
        "resumed_from_step": resumed,
        "steps_lost": reached - resumed if resumed is not None else None,
        "seconds_kill_to_next_step": round(rank0_after[0]["time"] - killed_at, 2) if rank0_after else None,
        "seconds_kill_to_new_progress": round(new_progress["time"] - killed_at, 2) if new_progress else None,
        "world_sizes_after_kill": sorted({r["world_size"] for r in after}),
        "samples_per_s_before": samples_per_s(rank0_before, per_step),
        "samples_per_s_after": samples_per_s(caught_up, per_step),
        "steps_trained": max((r["step"] for r in records), default=0),
        "driver_log_tail": log_path.read_text()[-1500:],
    })
    write_json(args.out, report)
    print(json.dumps({k: v for k, v in report.items() if k not in ("environment", "driver_log_tail")}, indent=1))
    return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
