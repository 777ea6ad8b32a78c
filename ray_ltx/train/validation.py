"""Validation videos during training, from the weights being trained.

The VAE, text encoder and tokenizer load only for a validation (and are released right after),
so a run without validation never loads them on workers. The transformer is the live training
module (LoRA adapters active), so no weights are copied. Seeds are fixed per prompt, so the videos
of successive validations differ only by what training changed.
"""

from __future__ import annotations

import gc
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from ray_ltx.config import Config

log = logging.getLogger(__name__)


@dataclass
class ValidationPrompt:
    prompt: str
    height: int
    width: int
    num_frames: int


def validation_prompts(config: Config) -> list[ValidationPrompt]:
    """Inline prompts and the prompts file (one a line, or JSON lines with prompt/height/width/num_frames)."""
    v = config.validation
    items: list[dict] = [{"prompt": p} for p in v.validation_prompts]
    if v.validation_prompts_file:
        for line in Path(v.validation_prompts_file).read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if line:
                items.append(json.loads(line) if line.startswith("{") else {"prompt": line})
    return [ValidationPrompt(item["prompt"], int(item.get("height", v.validation_height)),
                             int(item.get("width", v.validation_width)),
                             int(item.get("num_frames", v.validation_num_frames))) for item in items]


def enabled(config: Config) -> bool:
    v = config.validation
    return bool(v.validation_prompts or v.validation_prompts_file)


@torch.no_grad()
def render_validation(transformer: torch.nn.Module, config: Config, device: torch.device, step: int,
                      out_dir: Path) -> list[tuple[Path, ValidationPrompt]]:
    """Generate every validation prompt with ``transformer`` as it is now; returns (mp4, prompt) pairs."""
    from diffusers import FlowMatchEulerDiscreteScheduler, LTXPipeline

    from ray_ltx.generate import write_mp4
    from ray_ltx.model.loading import _load, load_text_encoder, load_tokenizer, load_vae, torch_dtype

    v = config.validation
    compute = torch_dtype(config.model.transformer_dtype)
    vae = load_vae(config, device)
    text_encoder = load_text_encoder(config, device)
    scheduler = _load(FlowMatchEulerDiscreteScheduler.from_pretrained, config, "scheduler", subfolder="scheduler")
    pipe = LTXPipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=load_tokenizer(config),
                       transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    was_training = transformer.training
    transformer.eval()
    outputs = []
    try:
        for i, item in enumerate(validation_prompts(config)):
            generator = torch.Generator(device="cpu").manual_seed(v.validation_seed + i)
            with torch.autocast(device.type, dtype=compute, enabled=compute != torch.float32):
                frames = pipe(prompt=item.prompt, num_frames=item.num_frames, height=item.height, width=item.width,
                              num_inference_steps=v.validation_inference_steps, guidance_scale=v.validation_guidance_scale,
                              generator=generator, output_type="np").frames[0]
            path = write_mp4(frames, out_dir / f"step_{step:06d}" / f"prompt_{i:02d}.mp4", v.validation_fps)
            outputs.append((path, item))
    finally:
        transformer.train(was_training)
        del pipe, vae, text_encoder
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return outputs
