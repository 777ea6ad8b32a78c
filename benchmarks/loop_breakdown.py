#!/usr/bin/env python
"""Where ray-ltx's LoRA batch-1 step time goes: the same model, engine and loss as the Ray Train loop,
run in one process without Ray, with parts of the loop's per-step work switched on and off.

Variants (full size, LoRA r128 on to_q,to_k,to_v,to_out.0, every block compiled, fused AdamW, batch 1):

- ``loop``: what ``ray_ltx.train.loop.train_loop`` does per step after the reader hands it a micro-batch: copy
  it to the GPU, a per-micro-batch CUDA generator, ``flow_matching_loss``,
  backward, ``float(loss)``, a float64 tensor for the all-reduce values and ``.tolist()``,
  ``engine.step()`` (clip + optimizer + scheduler), ``torch.cuda.synchronize``;
- ``loop_1thread``: the same with ``torch.set_num_threads(1)`` (Ray gives a 1-CPU worker OMP_NUM_THREADS=1);
- ``gpu_batch``: the batch already on the GPU, otherwise as ``loop``;
- ``no_sync``: the batch on the GPU, no per-step host sync (one sync at the end): the GPU-bound floor.

Also the feed alone: a worker's ``ray_ltx.train.data.MicroBatchReader`` (the cache read a few steps ahead
by a thread) with a 0.1 s pause per step (a step's compute), timing each ``step()``.

Usage (GPU):  python benchmarks/loop_breakdown.py --out $OUT/loop_breakdown_h100.json
CPU smoke:    python benchmarks/loop_breakdown.py --tiny --out /tmp/loop_tiny.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import environment, latent_spec, write_json  # noqa: E402
from train_bench import RANK, SHAPES, TARGET_MODULES, write_model_dir, write_synthetic_cache  # noqa: E402


def stats(times: list[float]) -> dict[str, float]:
    return {"median_s": round(statistics.median(times), 4), "mean_s": round(statistics.fmean(times), 4),
            "min_s": round(min(times), 4), "max_s": round(max(times), 4), "n": len(times)}


def profile_steps(step, sync, table_path: Path, steps: int = 6) -> dict[str, Any]:
    """Wall time vs GPU kernel time per step (torch.profiler), and the top CUDA ops to a text file."""
    from torch.profiler import ProfilerActivity, profile

    sync()
    import torch

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities) as prof:
        t0 = time.perf_counter()
        for i in range(steps):
            step(i, True, True)
        sync()
        wall = (time.perf_counter() - t0) / steps
    events = prof.key_averages()
    kernel_us = sum(e.self_device_time_total for e in events if e.device_type.name == "CUDA")
    cpu_us = sum(e.self_cpu_time_total for e in events)
    table_path.write_text(events.table(sort_by="self_device_time_total", row_limit=40))
    return {"steps": steps, "wall_s_per_step_profiled": round(wall, 4),
            "gpu_kernel_s_per_step": round(kernel_us / 1e6 / steps, 4),
            "gpu_busy_fraction": round(kernel_us / 1e6 / steps / wall, 3),
            "cpu_op_self_s_per_step": round(cpu_us / 1e6 / steps, 4)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--out", required=True)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--variants", default="loop,gpu_batch,no_sync,loop_1thread,loop_again",
                        help="also: loop_nogc (gc disabled)")
    parser.add_argument("--profile", action="store_true", help="torch.profiler over 6 loop steps")
    parser.add_argument("--compile_mode", default=None,
                        help="compile each block with this torch.compile mode instead of ray-ltx's block.compile() "
                             "(e.g. reduce-overhead: CUDA graphs)")
    parser.add_argument("--no_feed", action="store_true", help="skip the feed measurement")
    args = parser.parse_args()

    import torch

    from ray_ltx.config import load_config
    from ray_ltx.data.cache import LatentCache
    from ray_ltx.model.family import LatentSpec, family_for
    from ray_ltx.model.flow import flow_matching_loss
    from ray_ltx.train.data import DataPlan, MicroBatchReader
    from ray_ltx.train.engine import build_engine
    from ray_ltx.train.loop import prepare_transformer

    size = "tiny" if args.tiny else "full"
    tiny = args.tiny
    work = Path(args.workdir or tempfile.mkdtemp(prefix="loop-breakdown-"))
    model_dir, cache_dir = work / "model", work / "cache"
    if not (model_dir / "transformer").exists():
        write_model_dir(model_dir, size)
    write_synthetic_cache(model_dir, cache_dir, size, samples=32)
    config = load_config(None, {
        "pretrained_model_name_or_path": str(model_dir), "cache_dir": str(cache_dir), "output_dir": str(work / "o"),
        "video_resolution_buckets": SHAPES[size]["bucket"], "training_type": "lora", "rank": RANK,
        "lora_alpha": RANK, "target_modules": TARGET_MODULES, "batch_size": args.batch,
        "compile": not tiny and not args.compile_mode,
        "optimizer": "adamw" if tiny else "adamw_fused", "train_steps": 10_000, "report_to": "none"})
    device = torch.device("cuda" if torch.cuda.is_available() and not tiny else "cpu")
    compute = torch.bfloat16
    report: dict[str, Any] = {"benchmark": "loop_breakdown", "size": size, "batch": args.batch,
                              "environment": environment(), "command": " ".join(["python", *sys.argv])}

    cache = LatentCache.open(str(cache_dir))
    ids = cache.sample_ids()
    plan = DataPlan({SHAPES[size]["bucket"]: ids}, args.batch, 1, seed=0)
    reader = MicroBatchReader(plan, cache, rank=0, world_size=1, first_step=0, last_step=8)
    batches = [reader.step(i)[0][1] for i in range(8)]
    reader.close()

    started = time.monotonic()
    family = family_for(config)
    transformer, trainable = prepare_transformer(config, family, device)
    if args.compile_mode:
        for block in family.transformer_blocks(transformer):
            block.compile(mode=args.compile_mode)
    report["compile_mode"] = args.compile_mode or "default (block.compile())"
    engine = build_engine(transformer, config, device, 1)
    spec = LatentSpec.from_dict(latent_spec(size))
    report["load_s"] = round(time.monotonic() - started, 1)
    gpu_batch = batches[0].to(device, compute)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def step(i: int, from_row: bool, per_step_sync: bool) -> None:
        if args.compile_mode == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()
        batch = batches[i % len(batches)].to(device, compute) if from_row else gpu_batch
        generator = torch.Generator(device=device).manual_seed(1000 + i)
        with torch.autocast(device.type, dtype=compute):
            loss = flow_matching_loss(family, engine.module, batch, spec, config.diffusion, generator, compute)
        engine.backward(loss)
        if per_step_sync:
            loss_value = float(loss.detach())
            torch.tensor([loss_value, 0.0, 1.0, 1.0], dtype=torch.float64, device=device).tolist()
        engine.step()
        if per_step_sync:
            sync()

    started = time.monotonic()
    for i in range(3 if tiny else 8):  # compile + warm-up
        step(i, True, True)
    sync()
    report["compile_and_warmup_s"] = round(time.monotonic() - started, 1)
    print(json.dumps({"load_s": report["load_s"], "warmup_s": report["compile_and_warmup_s"]}), flush=True)

    steps = 4 if tiny else args.steps
    variants: dict[str, Any] = {}
    threads = torch.get_num_threads()
    import gc

    table = {"loop": (True, True, False), "gpu_batch": (False, True, False), "no_sync": (False, False, False),
             "loop_1thread": (True, True, True), "loop_again": (True, True, False), "loop_nogc": (True, True, False)}
    for name in args.variants.split(","):
        from_row, per_step, one_thread = table[name]
        torch.set_num_threads(1 if one_thread else threads)
        if name == "loop_nogc":
            gc.collect()
            gc.disable()
        times = []
        if per_step:
            for i in range(steps):
                t0 = time.perf_counter()
                step(i, from_row, per_step)
                times.append(time.perf_counter() - t0)
            variants[name] = stats(times)
        else:
            sync()
            t0 = time.perf_counter()
            for i in range(steps):
                step(i, from_row, per_step)
            sync()
            variants[name] = {"mean_s": round((time.perf_counter() - t0) / steps, 4), "n": steps}
        gc.enable()
        print(name, json.dumps(variants[name]), flush=True)
    torch.set_num_threads(threads)
    if args.profile:
        report["profile"] = profile_steps(step, sync, Path(args.out).parent / "loop_profile_top_ops.txt")
        print("profile", json.dumps(report["profile"]), flush=True)
    report["variants"] = variants
    report["torch_threads"] = threads
    if device.type == "cuda":
        report["max_memory_reserved_gib"] = round(torch.cuda.max_memory_reserved() / 2**30, 3)
    write_json(args.out, report)

    if args.no_feed:
        return 0
    # The feed alone: latency of a worker's reader per step when each step is followed by 0.1 s of "compute".
    feed_steps = 64
    first = time.perf_counter()
    reader = MicroBatchReader(plan, cache, rank=0, world_size=1, first_step=0, last_step=feed_steps)
    reader.step(0)
    first = time.perf_counter() - first
    waits = []
    for i in range(1, feed_steps):
        time.sleep(0.1)
        t0 = time.perf_counter()
        reader.step(i)
        waits.append(time.perf_counter() - t0)
    reader.close()
    report["reader_feed"] = {"first_step_s": round(first, 2), "next_step_after_0.1s_compute": stats(waits)}
    print("feed", json.dumps(report["reader_feed"]), flush=True)
    write_json(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
