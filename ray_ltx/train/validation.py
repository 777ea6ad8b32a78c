"""Validation videos during training, from the weights being trained.

The VAE, text encoder and tokenizer load only for a validation (and are released right after),
so a run without validation never loads them on workers. The transformer is the live training
module (LoRA adapters active), so no weights are copied. Seeds are fixed per prompt, so the videos
of successive validations differ only by what training changed.
"""

from __future__ import annotations

import gc
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from ray_ltx.config import Config
from ray_ltx.errors import ConfigError
from ray_ltx.media import load_image

log = logging.getLogger(__name__)


@dataclass
class ValidationPrompt:
    prompt: str
    height: int
    width: int
    num_frames: int
    image: str | None = None  # first frame of an image-to-video validation
    num_inference_steps: int | None = None  # None: the run's (or the checkpoint's) default


def validation_prompts(config: Config) -> list[ValidationPrompt]:
    """Every validation video of the run (inline prompts, the prompts file, finetrainers' validation dataset file),
    with the run's defaults filled in and ``--validation_images`` paired to the prompts in order."""
    from ray_ltx.data.validation_set import validation_items

    v = config.validation
    items = validation_items(v)
    images = list(v.validation_images)
    if images and len(images) != len(items):
        raise ConfigError(f"--validation_images: {len(images)} image(s) for {len(items)} validation prompt(s); give "
                          "one image per prompt, in the same order")
    return [ValidationPrompt(item.prompt, item.height or v.validation_height, item.width or v.validation_width,
                             item.num_frames or v.validation_num_frames,
                             images[i] if images else item.image, item.num_inference_steps)
            for i, item in enumerate(items)]


def enabled(config: Config) -> bool:
    v = config.validation
    return bool(v.validation_prompts or v.validation_prompts_file or v.validation_dataset_file)


def check(config: Config, family) -> None:
    """Before training starts: the prompts parse and every image opens (so a bad one never costs a run)."""
    if not enabled(config):
        if config.validation.validation_images:
            raise ConfigError("--validation_images needs validation prompts (--validation_prompts or "
                              "--validation_prompts_file), one per image")
        return
    items = validation_prompts(config)
    if any(item.image for item in items) and not family.supports_first_frame_conditioning:
        raise ConfigError(f"--validation_images: {family.describe()} has no image-to-video pipeline")
    for item in items:
        if item.image:
            load_image(item.image, item.height, item.width)


@torch.no_grad()
def render_validation(transformer: torch.nn.Module, config: Config, family, device: torch.device, step: int,
                      out_dir: Path) -> list[tuple[Path, ValidationPrompt]]:
    """Generate every validation prompt with ``transformer`` as it is now; returns (mp4, prompt) pairs."""
    from ray_ltx.media import write_mp4
    from ray_ltx.model.family import torch_dtype

    v = config.validation
    compute = torch_dtype(config.model.transformer_dtype)
    items = validation_prompts(config)
    defaults = family.inference_defaults()
    steps = v.validation_inference_steps or defaults["num_inference_steps"]
    guidance = defaults["guidance_scale"] if v.validation_guidance_scale is None else v.validation_guidance_scale
    pipes = {}
    from ray_ltx.progress import Progress

    progress = Progress(len(items), f"validation at step {step}: video", "videos", logger=log, every_s=0.0,
                        bar=False)
    was_training = transformer.training
    transformer.eval()
    outputs = []
    try:
        for i, item in enumerate(items):
            kind = item.image is not None
            if kind not in pipes:
                pipes[kind] = family.pipeline(device, compute, transformer=transformer, image_to_video=kind)
                pipes[kind].set_progress_bar_config(disable=True)
            extra = {"image": load_image(item.image, item.height, item.width)} if kind else {}
            generator = torch.Generator(device="cpu").manual_seed(v.validation_seed + i)
            with torch.autocast(device.type, dtype=compute, enabled=compute != torch.float32):
                frames = pipes[kind](prompt=item.prompt, num_frames=item.num_frames, height=item.height,
                                     width=item.width, num_inference_steps=item.num_inference_steps or steps,
                                     guidance_scale=guidance,
                                     generator=generator, output_type="np", **family.pipeline_kwargs(),
                                     **extra).frames[0]
            path = write_mp4(frames, out_dir / f"step_{step:06d}" / f"prompt_{i:02d}.mp4", v.validation_fps)
            outputs.append((path, item))
            progress.update(i + 1, prompt=item.prompt[:60])
    finally:
        transformer.train(was_training)
        pipes.clear()
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return outputs
