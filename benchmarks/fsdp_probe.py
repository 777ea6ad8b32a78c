#!/usr/bin/env python
"""Where ``--backend fsdp`` loses to the unsharded path on one GPU, variant by variant, in one run.

The full-size 2B LTX-Video transformer (random bf16 weights built on the GPU), a full finetune of a 49x512x768 clip
(latents 128x7x16x24, 128 text tokens), prepared by ray-ltx's own ``prepare_transformer`` and engines, stepped as
``ray_ltx.train.loop`` steps (flow-matching loss under autocast, backward, ``float(loss)``, the all-reduce values'
host copy, ``engine.step()``, a device sync), without Ray: ``torch.distributed`` at world size 1 (NCCL, or gloo
with ``--tiny``). Blocks compiled, fused AdamW. Variants (see ``VARIANTS``):

- ``ddp_ckpt_b1``: the unsharded path (ray-ltx's DDP engine, which is the bare model at world size 1), batch 1,
  gradient checkpointing: the baseline of every ``*_ckpt_b1`` ratio;
- ``fsdp_head_ckpt_b1``: ``--backend fsdp`` as it was before the ``FSDPOptions`` change (blocks resharded after
  the forward, fp32 gradient reduction, inputs cast per block, DTensor optimizer step, the per-gradient clip);
  only the last block is now never resharded;
- ``fsdp_ckpt_b1``: ``--backend fsdp`` as it trains now (``FSDPOptions.for_run`` at world size 1);
- ``fsdp_*_ckpt_b1``: that with one option set back or changed, to see what each buys;
- ``ddp_b1``/``ddp_b2``/``ddp_b4`` and ``fsdp_b2``: no checkpointing, for the best batch of a 2B full finetune.

Variants run in order in one child process (compiled code and the inductor cache are reused; each variant builds
a fresh model and frees it); a child that dies is replaced by one that skips the variant it died in. Each
variant's figures are appended to a JSON-lines file as it ends and the report (``--out``) is rewritten, so a
run cut short keeps what it measured. ``--budget_s`` bounds the whole run: a variant that would not finish is
skipped.

Usage (GPU):  python benchmarks/fsdp_probe.py --out $OUT/fsdp_probe_h200.json
CPU smoke:    python benchmarks/fsdp_probe.py --tiny --out /tmp/fsdp_probe_tiny.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, environment, latent_spec, write_json  # noqa: E402

SHAPES = {
    "full": {"latents": (128, 7, 16, 24), "text": (128, 4096), "bucket": "49x512x768"},
    "tiny": {"latents": (8, 2, 2, 3), "text": (128, 32), "bucket": "9x64x96"},
}
BASELINE = "ddp_ckpt_b1"
GIB = 2**30

# name -> engine, micro-batch, gradient checkpointing, FSDPOptions fields changed from FSDPOptions.for_run, and
# "head": the FSDP engine as before the FSDPOptions change (options and gradient clipping).
HEAD_OPTIONS = {"reshard_after_forward": True, "reduce_dtype": "fp32", "cast_block_inputs": True,
                "local_optimizer_step": False}
VARIANTS: dict[str, dict[str, Any]] = {  # in the order they run by default: what matters most first
    "ddp_ckpt_b1": {"engine": "ddp", "batch": 1, "ckpt": True},
    "fsdp_ckpt_b1": {"engine": "fsdp", "batch": 1, "ckpt": True},
    "fsdp_compile_inside_ckpt_b1": {"engine": "fsdp", "batch": 1, "ckpt": True,
                                    "options": {"compile_inside_checkpoint": True}},
    "fsdp_dtensor_step_ckpt_b1": {"engine": "fsdp", "batch": 1, "ckpt": True,
                                  "options": {"local_optimizer_step": False}},
    "fsdp_reshard_ckpt_b1": {"engine": "fsdp", "batch": 1, "ckpt": True, "options": {"reshard_after_forward": True}},
    "fsdp_head_ckpt_b1": {"engine": "fsdp", "batch": 1, "ckpt": True, "options": HEAD_OPTIONS, "head": True},
    "ddp_b2": {"engine": "ddp", "batch": 2, "ckpt": False},
    "ddp_b4": {"engine": "ddp", "batch": 4, "ckpt": False},
    "fsdp_bf16_reduce_ckpt_b1": {"engine": "fsdp", "batch": 1, "ckpt": True, "options": {"reduce_dtype": None}},
    "ddp_b1": {"engine": "ddp", "batch": 1, "ckpt": False},
    "fsdp_b2": {"engine": "fsdp", "batch": 2, "ckpt": False},
    "ddp_ckpt_b1_again": {"engine": "ddp", "batch": 1, "ckpt": True},
    "fsdp_cast_inputs_ckpt_b1": {"engine": "fsdp", "batch": 1, "ckpt": True, "options": {"cast_block_inputs": True}},
    "fsdp_head_compile_inside_ckpt_b1": {"engine": "fsdp", "batch": 1, "ckpt": True, "head": True,
                                         "options": {**HEAD_OPTIONS, "compile_inside_checkpoint": True}},
}
DEFAULT_ORDER = list(VARIANTS)
#: Variants profiled (a few extra steps under torch.profiler): GPU kernel time against wall time per step.
DEFAULT_PROFILED = "ddp_ckpt_b1,fsdp_head_ckpt_b1,fsdp_ckpt_b1"


# -- the child: variants in one process ------------------------------------------------------------


def _compile_key(spec: dict[str, Any]) -> tuple:
    """Variants with the same key run the same compiled graphs (a later one compiles in seconds)."""
    options = spec.get("options", {})
    wrapped = spec["engine"] == "fsdp" and spec["ckpt"] and not options.get("compile_inside_checkpoint")
    return spec["batch"], wrapped, bool(options.get("cast_block_inputs", spec.get("head")))


def _clip_as_before(engine) -> float:
    """``FSDPEngine._clip_grad_norm`` before the FSDPOptions change: ``to_local`` under autograd, one ``mul_`` per
    gradient."""
    import torch
    import torch.distributed as dist

    grads = [p.grad.to_local() for p in engine.params if p.grad is not None]
    squares = torch.zeros((), dtype=torch.float32, device=engine.device)
    if grads:
        squares = torch.nn.utils.get_total_norm(grads, norm_type=2.0).float().pow(2).to(engine.device)
    dist.all_reduce(squares)
    norm = squares.sqrt()
    if grads and engine.max_grad_norm > 0:
        scale = (engine.max_grad_norm / (norm + 1e-6)).clamp(max=1.0).to(grads[0].device)
        for grad in grads:
            grad.mul_(scale)
    return float(norm)


def _dynamo_counts() -> dict[str, int]:
    from torch._dynamo.utils import counters

    return {"unique_graphs": int(counters["stats"]["unique_graphs"]),
            "frames_compiled": int(counters["frames"]["ok"]),
            "graph_breaks": int(sum(counters["graph_break"].values())),
            "recompiles": int(sum(v for k, v in counters["recompiles"].items()))}


def run_variant(name: str, spec: dict[str, Any], args: argparse.Namespace, device, workdir: Path) -> dict[str, Any]:
    import dataclasses

    import torch

    from ray_ltx.config import load_config
    from ray_ltx.model.family import Batch, LatentSpec
    from ray_ltx.model.flow import flow_matching_loss
    from ray_ltx.model.ltx_video import LTXVideoFamily
    from ray_ltx.model.tiny import build_transformer
    from ray_ltx.train.engine import DDPEngine
    from ray_ltx.train.fsdp import FSDPEngine, FSDPOptions
    from ray_ltx.train.loop import prepare_transformer

    size = "tiny" if args.tiny else "full"
    shape = SHAPES[size]
    batch_size = spec["batch"]
    config = load_config(None, {
        "pretrained_model_name_or_path": str(workdir / "random-weights"), "output_dir": str(workdir / "out"),
        "cache_dir": str(workdir / "cache"), "video_resolution_buckets": shape["bucket"],
        "training_type": "full-finetune", "batch_size": batch_size, "gradient_checkpointing": spec["ckpt"],
        "compile": True, "optimizer": "adamw_fused", "backend": spec["engine"], "train_steps": 100_000,
        "report_to": "none", "transformer_dtype": "fp32" if args.tiny else "bf16"})
    family = LTXVideoFamily(config)
    # ray-ltx's own preparation, with the weights built on the device instead of read from a folder.
    family.load_transformer = lambda dtype, _device="cpu": build_transformer(size, dtype, device, seed=0)
    compute = torch.float32 if args.tiny else torch.bfloat16

    started = time.monotonic()
    before = _dynamo_counts()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    transformer, trainable = prepare_transformer(config, family, device)
    options = None
    if spec["engine"] == "fsdp":
        changes = {k: (torch.float32 if v == "fp32" else v) for k, v in spec.get("options", {}).items()}
        options = dataclasses.replace(FSDPOptions.for_run(config, 1), **changes)
        engine = FSDPEngine(transformer, config, device, 1, options)
        if spec.get("head"):
            engine._clip_grad_norm = lambda: _clip_as_before(engine)
    else:
        engine = DDPEngine(transformer, config, device, 1)
    build_s = time.monotonic() - started

    c, f, h, w = shape["latents"]
    tokens, dim = shape["text"]
    gen = torch.Generator(device=device).manual_seed(0)
    mask = torch.zeros((batch_size, tokens), dtype=torch.bool, device=device)
    mask[:, :48] = True
    batch = Batch(torch.randn((batch_size, c, f, h, w), generator=gen, device=device).to(torch.bfloat16),
                  (torch.randn((batch_size, tokens, dim), generator=gen, device=device) * 0.1).to(compute), mask)
    latent = LatentSpec.from_dict(latent_spec(size))

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def forward(i: int):
        generator = torch.Generator(device=device).manual_seed(1000 + i)
        with torch.autocast(device.type, dtype=compute, enabled=compute != torch.float32):
            return flow_matching_loss(family, engine.module, batch, latent, config.diffusion, generator, compute)

    def step(i: int) -> tuple[float, float]:
        """One optimizer step as ray_ltx.train.loop makes it (one micro-batch, world size 1)."""
        with engine.accumulating(True):
            loss = forward(i)
            engine.backward(loss)
        loss_value = float(loss.detach())
        torch.tensor([loss_value, 0.0, float(batch.num_tokens), float(batch_size)], dtype=torch.float64,
                     device=device).tolist()
        norm = engine.step()
        sync()
        return loss_value, norm

    warmup, steps = args.warmup, args.steps
    started = time.monotonic()
    losses = []
    for i in range(warmup):
        losses.append(step(i)[0])
    first_steps_s = time.monotonic() - started
    times, norms = [], []
    for i in range(warmup, warmup + steps):
        t0 = time.perf_counter()
        loss_value, norm = step(i)
        times.append(time.perf_counter() - t0)
        losses.append(loss_value)
        norms.append(norm)

    # Where a step's time goes: forward, backward, engine.step() (clip + optimizer), each ended by a device sync.
    phases: dict[str, list[float]] = {"forward": [], "backward": [], "engine_step": []}
    for i in range(warmup + steps, warmup + steps + (1 if args.tiny else 3)):
        with engine.accumulating(True):
            t0 = time.perf_counter()
            loss = forward(i)
            sync()
            t1 = time.perf_counter()
            engine.backward(loss)
            sync()
            t2 = time.perf_counter()
        engine.step()
        sync()
        t3 = time.perf_counter()
        for key, seconds in zip(phases, (t1 - t0, t2 - t1, t3 - t2), strict=True):
            phases[key].append(seconds)

    s_per_step = statistics.median(times)
    result: dict[str, Any] = {
        **{k: v for k, v in spec.items() if k != "options"},
        "options": {k: str(v) for k, v in dataclasses.asdict(options).items()} if options else None,
        "trainable_parameters": trainable,
        "build_s": round(build_s, 1),
        "warmup_steps": warmup,
        "warmup_s_incl_compile": round(first_steps_s, 1),
        "steps": steps,
        "step_times_s": [round(t, 4) for t in times],
        "s_per_step_median": round(s_per_step, 4),
        "s_per_step_min": round(min(times), 4),
        "samples_per_s": round(batch_size / s_per_step, 3),
        "phase_s_median": {k: round(statistics.median(v), 4) for k, v in phases.items()},
        "first_losses": [round(x, 5) for x in losses[:3]],
        "last_grad_norm": round(norms[-1], 4),
        "finite": all(map(_finite, losses + norms)),
    }
    if device.type == "cuda":
        result["max_memory_reserved_gib"] = round(torch.cuda.max_memory_reserved(device) / GIB, 2)
        result["max_memory_allocated_gib"] = round(torch.cuda.max_memory_allocated(device) / GIB, 2)
    if name in args.profile.split(","):
        result["profile"] = _profile(step, sync, warmup + steps + 3, Path(args.out).parent / f"fsdp_probe_{name}_ops.txt")
    after = _dynamo_counts()
    result["dynamo"] = {k: after[k] - before[k] for k in after}

    engine = transformer = batch = None  # the closures above hold them too
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        result["allocated_after_free_gib"] = round(torch.cuda.memory_allocated(device) / GIB, 3)
    return result


def _finite(x: float) -> bool:
    return x == x and abs(x) != float("inf")


def _profile(step, sync, first: int, table: Path, steps: int = 2) -> dict[str, float]:
    """Wall time against GPU kernel time per step under torch.profiler; the top device ops to a text file."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    sync()
    with profile(activities=activities) as prof:
        t0 = time.perf_counter()
        for i in range(steps):
            step(first + i)
        wall = (time.perf_counter() - t0) / steps
    events = prof.key_averages()
    kernel_s = sum(e.self_device_time_total for e in events if e.device_type.name == "CUDA") / 1e6 / steps
    table.write_text(events.table(sort_by="self_device_time_total" if torch.cuda.is_available() else "self_cpu_time_total",
                                  row_limit=40))
    return {"steps": steps, "wall_s_per_step_profiled": round(wall, 4), "gpu_kernel_s_per_step": round(kernel_s, 4),
            "gpu_busy_fraction": round(kernel_s / wall, 3)}


def child(args: argparse.Namespace) -> int:
    import torch
    import torch.distributed as dist

    if args.tiny:
        import functools

        # Inductor's C++ build is minutes on a 2-core CPU; AOTAutograd without it still traces what the GPU compiles.
        torch.compile = functools.partial(torch.compile, backend="aot_eager")
    # Variants in one process: each rebuilt model must compile (or reuse) its own graphs, never fall back to eager
    # because an earlier variant used up the cache, and never get a dynamic-batch graph from an earlier shape.
    dynamo = torch._dynamo.config
    for limit in ("recompile_limit", "cache_size_limit"):
        if hasattr(dynamo, limit):
            setattr(dynamo, limit, 256)
    dynamo.automatic_dynamic_shapes = False

    cuda = torch.cuda.is_available() and not args.tiny
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    if cuda:  # the allocator's statistics exist only once CUDA is initialised ("Invalid device argument" before)
        torch.cuda.set_device(device)
        torch.zeros(1, device=device)
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
    dist.init_process_group("nccl" if cuda else "gloo", rank=0, world_size=1,
                            device_id=device if cuda else None)
    workdir = Path(args.workdir)
    compiled: set[tuple] = set()
    results = Path(args.results)
    for name in args.variants.split(","):
        spec = VARIANTS[name]
        key = _compile_key(spec)
        needed = (args.warm_variant_s if key in compiled else args.cold_variant_s) * (0.2 if args.tiny else 1)
        left = args.deadline - time.time()
        with results.open("a") as handle:
            if left < needed:
                handle.write(json.dumps({"name": name, "skipped": f"{left:.0f} s left, about {needed:.0f} s needed"}) + "\n")
                continue
            handle.write(json.dumps({"name": name, "started": time.time()}) + "\n")
        print(f"[fsdp_probe] {name} ({left:.0f} s left)", flush=True)
        try:
            result = run_variant(name, spec, args, device, workdir)
        except torch.OutOfMemoryError as error:
            result = {"error": f"out of memory: {str(error).splitlines()[0]}"}
            import gc

            gc.collect()
            torch.cuda.empty_cache()
        compiled.add(key)
        with results.open("a") as handle:
            handle.write(json.dumps({"name": name, "result": result}) + "\n")
        print(f"[fsdp_probe] {name}: " + json.dumps({k: result.get(k) for k in (
            "s_per_step_median", "samples_per_s", "max_memory_reserved_gib", "phase_s_median", "error")}), flush=True)
    dist.destroy_process_group()
    return 0


# -- the parent: children within the budget, the report -------------------------------------------


def read_results(path: Path) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Finished variants by name, and the variants started (in order)."""
    done: dict[str, dict[str, Any]] = {}
    started: list[str] = []
    if not path.exists():
        return done, started
    for line in path.read_text().splitlines():
        record = json.loads(line)
        if "started" in record:
            started.append(record["name"])
        elif "result" in record:
            done[record["name"]] = record["result"]
        elif "skipped" in record:
            done[record["name"]] = {"skipped": record["skipped"]}
    return done, started


def summarize(done: dict[str, dict[str, Any]]) -> dict[str, Any]:
    base = done.get(BASELINE, {}).get("samples_per_s")
    ratios = {name: round(r["samples_per_s"] / base, 3) for name, r in done.items()
              if base and r.get("samples_per_s") and r.get("ckpt") and r.get("batch") == 1}
    full = {name: r["samples_per_s"] for name, r in done.items() if r.get("samples_per_s")}
    best = max(full, key=full.get) if full else None
    best_fsdp = max((n for n in ratios if n.startswith("fsdp_") and "head" not in n), key=ratios.get, default=None)
    return {
        "ratio_to_baseline_samples_per_s": ratios,
        "fsdp_as_trained_ratio": ratios.get("fsdp_ckpt_b1"),
        "best_fsdp_variant": best_fsdp,
        "goal_fsdp_ratio_0.8_met": (ratios.get("fsdp_ckpt_b1") or 0) >= 0.8,
        "best_full_finetune": {"variant": best, "samples_per_s": full.get(best)} if best else None,
        "goal_full_8_samples_per_s_met": (full.get(best) or 0) >= 8.0 if best else False,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--tiny", action="store_true", help="tiny model on the CPU (gloo): a smoke test")
    parser.add_argument("--budget_s", type=float, default=330.0, help="the whole run, children included")
    parser.add_argument("--variants", default=",".join(DEFAULT_ORDER), help=f"in order; known: {', '.join(VARIANTS)}")
    parser.add_argument("--profile", default=DEFAULT_PROFILED, help="variants to profile for 2 extra steps")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per variant (default 15, --tiny 3)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="steps before timing, the first compiles (default 3, --tiny 1)")
    parser.add_argument("--cold_variant_s", type=float, default=60.0,
                        help="a variant whose graphs are not compiled yet is started only with this much time left")
    parser.add_argument("--warm_variant_s", type=float, default=20.0, help="the same for one that reuses them")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--_child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--results", help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.steps = args.steps or (3 if args.tiny else 15)
    args.warmup = args.warmup or (1 if args.tiny else 3)
    if args._child:
        return child(args)

    started = time.time()
    deadline = started + args.budget_s - 15  # the last 15 s for the report (environment() imports ray and mlflow)
    unknown = [v for v in args.variants.split(",") if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="fsdp-probe-"))
    results = out.with_suffix(".jsonl")
    results.unlink(missing_ok=True)
    report: dict[str, Any] = {"benchmark": "fsdp_probe", "size": "tiny" if args.tiny else "full",
                              "command": " ".join(["python", *sys.argv]), "budget_s": args.budget_s,
                              "shapes": SHAPES["tiny" if args.tiny else "full"], "variants_asked": args.variants,
                              "children": []}
    pending = args.variants.split(",")
    failed: dict[str, dict[str, Any]] = {}  # variants a child ended in
    while pending and deadline - time.time() > 15:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--_child", "--variants", ",".join(pending),
               "--results", str(results), "--deadline", str(deadline - 5), "--out", str(out),
               "--workdir", str(workdir), "--steps", str(args.steps), "--warmup", str(args.warmup),
               "--profile", args.profile, "--cold_variant_s", str(args.cold_variant_s),
               "--warm_variant_s", str(args.warm_variant_s)] + (["--tiny"] if args.tiny else [])
        child_started = time.time()
        try:  # the child's output goes to ours: progress shows as it runs
            rc: int | str = subprocess.run(cmd, cwd=REPO, timeout=max(deadline - time.time(), 1)).returncode
        except subprocess.TimeoutExpired:
            rc = "killed at the end of the budget"
        done, began = read_results(results)
        crashed = [name for name in began if name not in done and name not in failed]
        report["children"].append({"variants": pending, "exit": rc, "wall_s": round(time.time() - child_started, 1),
                                   "died_in": crashed})
        failed.update({name: {"error": f"the child process ended in this variant (exit {rc})"} for name in crashed})
        done.update(failed)
        pending = [name for name in pending if name not in done]
        report["variants"] = done
        report["summary"] = summarize(done)
        write_json(out, report)
        if rc != 0 and not crashed:
            break  # died outside any variant (start-up): another child would too
    done = {**read_results(results)[0], **failed}
    for name in pending:
        done.setdefault(name, {"skipped": "the budget ended"})
    report["variants"] = {name: done[name] for name in args.variants.split(",") if name in done}
    report["summary"] = summarize(report["variants"])
    report["environment"] = environment()
    report["wall_s"] = round(time.time() - started, 1)
    write_json(out, report)
    print(json.dumps(report["summary"], indent=1), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
