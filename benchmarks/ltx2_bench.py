#!/usr/bin/env python
"""LTX-2 LoRA training throughput: ray-ltx beside a plain diffusers + PEFT loop, same GPU, same call.

What it runs (full size: diffusers' default ``LTX2VideoTransformer3DModel``, the 19B LTX-2 — 48 layers, a 32 x 128
video stream and a 32 x 64 audio stream —, random bf16 weights; video latents 1x128x7x16x24 = a 49x512x768 clip =
2688 tokens; 1024 prompt tokens of 3840 dims per stream, as ``LTX2Pipeline`` pads them; 49 audio latent frames of
128, the length the pipeline gives a 49-frame clip at 25 fps):

- baseline: a plain single-process eager loop (diffusers transformer, PEFT LoRA r128 on to_q,to_k,to_v,to_out.0 of
  the video stream — the audio stream and the audio-video bridges frozen, as video-only training leaves them —, torch
  AdamW, bf16 autocast, flow-matching MSE on the video, the audio stream fed noise at the video's timestep as
  ``LTX2Pipeline`` starts it), each config in its own process so its peak memory is its own;
- ray-ltx: ``ray_ltx.train.driver.train(config)`` (Ray Train, one GPU worker, Ray Data reading a synthetic latent
  cache, MLflow tracking on) for the same LoRA, blocks compiled, fused AdamW. Step times are the per-step metrics the
  loop logs to MLflow (``step_time_s``), read back after the run.

Pairs run baseline then ray-ltx at batch 1, then at batch 2 while the time budget lasts; the ratio of each pair is
printed and written with the figures (goal of the LTX-2 issue: ray-ltx >= 1.5x the plain loop).

Usage (GPU machine):  python benchmarks/ltx2_bench.py --out benchmarks/results/ltx2_train_h200.json
CPU smoke test:       python benchmarks/ltx2_bench.py --tiny --out /tmp/ltx2_tiny.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Deadline, environment, write_json  # noqa: E402
from train_bench import (  # noqa: E402
    RANK,
    TARGET_MODULES,
    print_table,
    run_baseline,
    run_ray_ltx,
    summarise,
    time_steps,
    write_synthetic_cache,
)

GOAL_SPEEDUP = 1.5
FRAME_RATE = 25.0  # ray-ltx's default --frame_rate, LTX2Pipeline's default frame rate
TOKENS = 1024  # LTX2Pipeline's max_sequence_length, ray-ltx's default for LTX-2
SIZES = {
    "full": {"bucket": "49x512x768", "latent_fhw": (7, 16, 24)},
    "tiny": {"bucket": "9x64x96", "latent_fhw": (2, 2, 3)},
}
#: The Gemma 3 12B text tower LTX-2 encodes prompts with (only its config is written: the cache is synthetic).
GEMMA3_12B_TEXT = {"hidden_size": 3840, "intermediate_size": 15360, "num_hidden_layers": 48,
                   "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 256, "vocab_size": 262208}


# -- the model directory and its shapes ------------------------------------------------------------------------------


def write_model_dir(model_dir: Path, size: str) -> None:
    """What ray-ltx training of LTX-2 loads: transformer/ with weights; vae/, audio_vae/, connectors/ and text_encoder/
    configs (the cache fingerprint reads them; training from a complete cache loads none of their weights)."""
    import torch
    from diffusers import AutoencoderKLLTX2Audio, AutoencoderKLLTX2Video
    from diffusers.pipelines.ltx2 import LTX2TextConnectors
    from transformers import Gemma3Config

    from ray_ltx.model.tiny import build_ltx2_transformer, write_pipeline

    if size == "tiny":  # the whole tiny pipeline: small enough to keep every weight
        write_pipeline(model_dir, size="tiny", family="ltx2", overwrite=True)
        return
    device = "cuda" if torch.cuda.is_available() else "meta"
    transformer = build_ltx2_transformer("full", torch.bfloat16, device, seed=0)
    transformer.save_pretrained(str(model_dir / "transformer"), safe_serialization=True, max_shard_size="10GB")
    del transformer
    with torch.device("meta"):
        for name, cls in (("vae", AutoencoderKLLTX2Video), ("audio_vae", AutoencoderKLLTX2Audio),
                          ("connectors", LTX2TextConnectors)):
            cls().save_config(str(model_dir / name))
    Gemma3Config(text_config=GEMMA3_12B_TEXT).save_pretrained(str(model_dir / "text_encoder"))
    if device == "cuda":
        torch.cuda.empty_cache()


def shapes(model_dir: Path, size: str) -> dict[str, Any]:
    """Latents, prompt and audio shapes of one sample, and the cache's LatentSpec, from the directory's configs."""
    from diffusers import AutoencoderKLLTX2Audio, AutoencoderKLLTX2Video, LTX2VideoTransformer3DModel

    from ray_ltx.model.ltx2 import audio_latent_frames

    transformer = LTX2VideoTransformer3DModel.load_config(str(model_dir / "transformer"))
    vae = AutoencoderKLLTX2Video.load_config(str(model_dir / "vae"))
    audio_vae = AutoencoderKLLTX2Audio.load_config(str(model_dir / "audio_vae"))
    channels = int(transformer["in_channels"])
    if transformer.get("use_prompt_embeddings", True):  # LTX-2.0: both contexts are caption-wide
        widths = (int(transformer["caption_channels"]),) * 2
    else:
        widths = (int(transformer["cross_attention_dim"]), int(transformer["audio_cross_attention_dim"]))
    f, h, w = SIZES[size]["latent_fhw"]
    frames = int(SIZES[size]["bucket"].split("x")[0])
    spatial = int(vae.get("spatial_compression_ratio") or 32)
    temporal = int(vae.get("temporal_compression_ratio") or 8)
    return {
        "bucket": SIZES[size]["bucket"],
        "latents": (channels, f, h, w),
        "text": (TOKENS, sum(widths)),
        "context_widths": widths,
        "audio": (audio_latent_frames(frames, FRAME_RATE, dict(audio_vae)), int(transformer["audio_in_channels"])),
        "spec": {"latent_channels": channels, "spatial_compression": spatial, "temporal_compression": temporal,
                 "scaling_factor": float(vae.get("scaling_factor", 1.0)), "latents_mean": [0.0] * channels,
                 "latents_std": [1.0] * channels, "patch_size": 1, "patch_size_t": 1},
    }


# -- the baseline: a plain diffusers + PEFT loop ----------------------------------------------------------------------


def baseline_one(spec: dict[str, Any]) -> dict[str, Any]:
    """One eager LoRA config in this process; returns its figures."""
    import torch
    from peft import LoraConfig
    from torch.utils.flop_counter import FlopCounterMode

    from ray_ltx.model.ltx2 import AUDIO_BRANCH
    from ray_ltx.model.tiny import build_ltx2_transformer

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    size, batch = spec["size"], spec["batch"]
    shape = spec["shape"]
    c, f, h, w = shape["latents"]
    tokens, _ = shape["text"]
    audio_len, audio_width = shape["audio"]
    video_width, audio_ctx_width = shape["context_widths"]
    model = build_ltx2_transformer(size, torch.bfloat16, device, seed=0)
    total_params = sum(p.numel() for p in model.parameters())
    gen = torch.Generator(device=device).manual_seed(0)
    latents = torch.randn((batch, c, f, h, w), generator=gen, device=device)
    video_ctx = (torch.randn((batch, tokens, video_width), generator=gen, device=device) * 0.1).to(torch.bfloat16)
    audio_ctx = (torch.randn((batch, tokens, audio_ctx_width), generator=gen, device=device) * 0.1).to(torch.bfloat16)
    mask = torch.zeros((batch, tokens), dtype=torch.bool, device=device)
    mask[:, -64:] = True  # LTX2Pipeline pads on the left

    def pack(x: torch.Tensor) -> torch.Tensor:  # (B, C, F, H, W) -> (B, F*H*W, C), patch size 1
        return x.permute(0, 2, 3, 4, 1).flatten(1, 3)

    def forward(noisy: torch.Tensor, audio: torch.Tensor, timestep: torch.Tensor, n: int) -> torch.Tensor:
        return model(hidden_states=pack(noisy), audio_hidden_states=audio, encoder_hidden_states=video_ctx[:n],
                     audio_encoder_hidden_states=audio_ctx[:n], timestep=timestep, audio_timestep=timestep,
                     sigma=timestep, encoder_attention_mask=mask[:n], audio_encoder_attention_mask=mask[:n],
                     num_frames=f, height=h, width=w, fps=FRAME_RATE, audio_num_frames=audio_len,
                     use_cross_timestep=True, return_dict=False)[0]

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16), counter:
        forward(latents[:1].to(torch.bfloat16), torch.randn((1, audio_len, audio_width), device=device,
                                                            dtype=torch.bfloat16), torch.full((1,), 500.0, device=device), 1)
    flops = int(counter.get_total_flops())

    # LoRA on the video stream's attention: the same layers ray-ltx adapts in video-only training.
    targets = rf"(?!{AUDIO_BRANCH}$)(?:.*\.)?(?:{'|'.join(t.replace('.', chr(92) + '.') for t in TARGET_MODULES)})"
    model.requires_grad_(False)
    model.add_adapter(LoraConfig(r=RANK, lora_alpha=RANK, target_modules=targets, init_lora_weights=True))
    for name, param in model.named_parameters():  # diffusers' cast_training_params: trainable weights in fp32
        if ".lora_" in name:
            param.data = param.data.float()
            param.requires_grad_(True)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), weight_decay=1e-4, eps=1e-8)

    def step() -> float:
        sigmas = torch.rand((batch,), generator=gen, device=device).clamp(1e-3, 1.0)
        noise = torch.randn(latents.shape, generator=gen, device=device)
        s = sigmas.view(-1, 1, 1, 1, 1)
        noisy = ((1 - s) * latents + s * noise).to(torch.bfloat16)
        audio = (sigmas.view(-1, 1, 1) * torch.randn((batch, audio_len, audio_width), generator=gen,
                                                      device=device)).to(torch.bfloat16)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            pred = forward(noisy, audio, (sigmas * 1000).to(torch.bfloat16), batch)
        loss = torch.nn.functional.mse_loss(pred.float(), pack(noise - latents))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss)  # a host sync each step, as the ray-ltx loop has

    return {"total_parameters": total_params, "trainable_parameters": sum(p.numel() for p in params),
            "forward_flops_per_sample": flops, **time_steps(step, spec["warmup"], spec["steps"], device)}


# -- the pairs ---------------------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny LTX-2 on CPU: a smoke test of this script")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "ltx2_train_h200.json"))
    parser.add_argument("--workdir", default=None, help="scratch space (default: a temp dir)")
    parser.add_argument("--batches", default="1,2", help="comma-separated per-GPU batches, one pair each, in order")
    parser.add_argument("--steps", type=int, default=None, help="timed steps of each baseline (default by size)")
    parser.add_argument("--ray_steps", type=int, default=None, help="steps of each ray-ltx run (default by size)")
    parser.add_argument("--budget_s", type=float, default=540, help="start no pair that would not finish by then")
    parser.add_argument("--_baseline", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args._baseline:
        result = baseline_one(json.loads(args._baseline))
        print("BASELINE_RESULT " + json.dumps(result), flush=True)
        return 0

    deadline = Deadline(args.budget_s)
    size = "tiny" if args.tiny else "full"
    tiny = size == "tiny"
    if tiny:
        os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"  # the GPU image has mlflow-skinny (no SQL store)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="ltx2-bench-"))
    model_dir, cache_dir = work / "model", work / "cache"
    started = time.monotonic()
    if not (model_dir / "transformer").exists():
        write_model_dir(model_dir, size)
    shape = shapes(model_dir, size)
    batches = [int(b) for b in args.batches.split(",") if b]
    cache = write_synthetic_cache(model_dir, cache_dir, size, samples=max(16, 8 * max(batches)),
                                  shape=shape, spec=shape["spec"])
    report: dict[str, Any] = {
        "benchmark": "ltx2_bench",
        "size": size,
        "model": "LTX-2 transformer, diffusers' default config (19B)" if not tiny else "tiny LTX-2",
        "shapes": {k: v for k, v in shape.items() if k != "spec"},
        "environment": environment(),
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "goal_speedup": GOAL_SPEEDUP,
        "setup": {**cache, "setup_s": round(time.monotonic() - started, 1)},
        "baseline": {},
        "ray_ltx": {},
    }
    out = Path(args.out)
    write_json(out, report)
    print(json.dumps(report["environment"]), flush=True)
    steps = args.steps or (3 if tiny else 8)
    ray_steps = args.ray_steps or (6 if tiny else 24)

    for batch in batches:
        if deadline.left() < (30 if tiny else 240):
            report["ray_ltx"][f"ray_ltx_lora_b{batch}_compile"] = {"error": "skipped: out of time"}
            continue
        name = f"baseline_lora_b{batch}"
        print(f"== {name}", flush=True)
        spec = {"size": size, "batch": batch, "shape": shape, "warmup": 2 if tiny else 3, "steps": steps}
        command = [sys.executable, str(Path(__file__).resolve()), "--_baseline", json.dumps(spec)]
        entry = {"spec": spec, "measured_utc": environment()["date_utc"],
                 **run_baseline(spec, timeout=max(60.0, deadline.left() - 150), command=command)}
        summarise(entry, batch, entry.get("forward_flops_per_sample"), 2)
        report["baseline"][name] = entry
        print(json.dumps({k: v for k, v in entry.items() if k not in ("step_times_s", "spec")}), flush=True)
        write_json(out, report)

        run = {"name": f"ray_ltx_lora_b{batch}_compile", "training_type": "lora", "batch": batch,
               "gradient_checkpointing": False, "compile": not tiny, "optimizer": "adamw" if tiny else "adamw_fused",
               "steps": ray_steps, "warmup": 2 if tiny else 6, "baseline": name}
        print(f"== {run['name']}", flush=True)
        try:
            ray_entry = {"spec": run, "measured_utc": environment()["date_utc"],
                         **run_ray_ltx(run, model_dir, cache_dir, work, size)}
        except Exception as error:  # noqa: BLE001 - record and go on
            import traceback

            ray_entry = {"spec": run, "error": f"{type(error).__name__}: {error}",
                         "log_tail": traceback.format_exc()[-3000:]}
        summarise(ray_entry, batch, entry.get("forward_flops_per_sample"), 2)
        if ray_entry.get("s_per_step_median") and entry.get("s_per_step_median"):
            ray_entry["speedup_vs_baseline"] = round(entry["s_per_step_median"] / ray_entry["s_per_step_median"], 3)
            ray_entry["goal_met"] = ray_entry["speedup_vs_baseline"] >= GOAL_SPEEDUP
        report["ray_ltx"][run["name"]] = ray_entry
        print(json.dumps({k: v for k, v in ray_entry.items()
                          if k not in ("step_times_s", "spec", "memory_report", "command")}), flush=True)
        write_json(out, report)
        shutil.rmtree(work / "runs" / run["name"], ignore_errors=True)

    print_table(report, peak=790)
    return 0


if __name__ == "__main__":
    sys.exit(main())
