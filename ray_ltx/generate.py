"""Inference with the model family's diffusers pipeline: one video, or a prompt file spread over GPUs with Ray Data.

Equivalent to the diffusers example users know (LTX-Video; with ``--image``, ``LTXConditionPipeline`` or
``LTXImageToVideoPipeline`` and ``image=``)::

    pipe = LTXPipeline.from_pretrained(model)
    pipe.load_lora_weights(lora_dir, adapter_name="ltxv-lora")
    pipe.set_adapters(["ltxv-lora"], [0.75])
    export_to_video(pipe(prompt, ...).frames[0], "output.mp4", fps=24)

``--lora`` takes a ray-ltx output dir, a safetensors file, or weights a tracker holds: a run's
(``runs:/<run_id>/weights``) or a registered model's version (``models:/NAME/latest``, ``models:/NAME/3``),
downloaded through :mod:`ray_ltx.tracking` from ``--mlflow_tracking_uri`` (default: MLFLOW_TRACKING_URI).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from ray_ltx.config import default_tracking_uri
from ray_ltx.errors import ConfigError
from ray_ltx.redaction import Secret

log = logging.getLogger(__name__)

ADAPTER_NAME = "ray-ltx-lora"


def resolve_lora(lora: str, tracking_uri: str | Secret | None = None) -> str:
    """A local path for ``lora`` (a run's or a registered model's weights are downloaded first)."""
    if lora.startswith(("runs:/", "models:/", "mlflow-artifacts:/")):
        from ray_ltx import tracking

        return tracking.download(lora, tracking_uri)
    if not Path(lora).exists():
        raise ConfigError(f"--lora {lora}: no such file or directory (give a ray-ltx output dir, a .safetensors "
                          "file, runs:/<run_id>/weights or models:/NAME/latest)")
    return lora


def _dtype(name: str | None, device: torch.device) -> torch.dtype:
    from ray_ltx.model.family import torch_dtype

    if name:
        return torch_dtype(name)
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def model_family(model: str, base_model: str | None = None, model_name: str = "auto", variant: str = "auto"):
    """The model family of ``model`` (a Hub id, a pipeline folder or a single file), as training resolves it."""
    from ray_ltx.config import build_config
    from ray_ltx.model.family import family_for

    config = build_config({"pretrained_model_name_or_path": model, "base_model_name_or_path": base_model,
                           "model_name": model_name, "model_variant": variant}, source="ray-ltx generate")
    return family_for(config.resolved())


def load_pipeline(model: str, lora: str | None = None, lora_scale: float = 1.0, dtype: str | None = None,
                  device: torch.device | None = None, image_to_video: bool = False, base_model: str | None = None,
                  model_name: str = "auto", variant: str = "auto", tracking_uri: str | Secret | None = None):
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    family = model_family(model, base_model, model_name, variant)
    pipe = family.pipeline(device, _dtype(dtype, device), image_to_video=image_to_video)
    if lora:
        lora = resolve_lora(lora, tracking_uri)
        family.check_lora(lora, pipe)
        pipe.load_lora_weights(lora, adapter_name=ADAPTER_NAME)
        pipe.set_adapters([ADAPTER_NAME], [lora_scale])
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device), family


def render(pipe, family, prompt: str, *, negative_prompt: str = "", num_frames: int = 49, height: int = 512,
           width: int = 768, steps: int | None = None, guidance_scale: float | None = None, seed: int = 0,
           image: str | None = None, show: bool = True):
    """Frames (F, H, W, 3) float in [0, 1]; the same seed gives the same frames."""
    from ray_ltx.media import load_image
    from ray_ltx.progress import Progress

    defaults = family.inference_defaults()
    generator = torch.Generator(device="cpu").manual_seed(seed)
    extra = {"image": load_image(image, height, width)} if image else {}
    steps = steps or defaults["num_inference_steps"]
    progress = Progress(steps, f"{prompt[:40]!r}: denoising step", "steps", logger=log, every_s=10.0) if show else None

    def on_step(_pipe, index, _timestep, tensors):
        if progress is not None:
            progress.update(index + 1)
        return tensors

    frames = pipe(prompt=prompt, negative_prompt=negative_prompt or None, num_frames=num_frames, height=height,
                  width=width, num_inference_steps=steps,
                  guidance_scale=defaults["guidance_scale"] if guidance_scale is None else guidance_scale,
                  generator=generator, output_type="np", callback_on_step_end=on_step, **family.pipeline_kwargs(),
                  **extra).frames[0]
    if progress is not None:
        progress.close()
    return frames


LOAD_OPTIONS = ("model", "lora", "lora_scale", "dtype", "base_model", "model_name", "variant", "tracking_uri")
RENDER_OPTIONS = ("negative_prompt", "num_frames", "height", "width", "steps", "guidance_scale", "image")


def _load(options: dict[str, Any]):
    return load_pipeline(**{k: options.get(k) for k in LOAD_OPTIONS if options.get(k) is not None},
                         image_to_video=bool(options.get("image")))


def generate_video(*, model: str, prompt: str, out: str, seed: int = 0, fps: int = 24, **options: Any) -> Path:
    """One video; ``options`` are :data:`LOAD_OPTIONS` and :data:`RENDER_OPTIONS` (e.g. lora, steps, image)."""
    unknown = set(options) - set(LOAD_OPTIONS) - set(RENDER_OPTIONS)
    if unknown:
        raise TypeError(f"generate_video got unknown options {sorted(unknown)}")
    pipe, family = _load({"model": model, **options})
    frames = render(pipe, family, prompt, seed=seed, **{k: options[k] for k in RENDER_OPTIONS if k in options})
    from ray_ltx.media import write_mp4

    return write_mp4(frames, out, fps)


class _Renderer:
    """Ray Data actor: one pipeline per GPU (or CPU actor), prompts in, mp4 paths out."""

    def __init__(self, options: dict[str, Any]):
        self.options = options
        self.pipe, self.family = _load(options)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        o = self.options
        paths = []
        for index, prompt in zip(batch["index"], batch["prompt"], strict=True):
            frames = render(self.pipe, self.family, str(prompt), seed=o["seed"] + int(index), show=False,
                            **{k: o[k] for k in RENDER_OPTIONS if k in o})
            from ray_ltx.media import write_mp4

            paths.append(str(write_mp4(frames, Path(o["out"]) / f"{int(index):04d}.mp4", o["fps"])))
        return {"index": batch["index"], "prompt": batch["prompt"], "path": paths}


def generate_batch(prompts: list[str], options: dict[str, Any], num_gpus: int | None = None) -> list[dict[str, Any]]:
    """Render every prompt, spread over ``num_gpus`` GPU actors (all the cluster has by default)."""
    import ray

    from ray_ltx.cluster import cluster_gpus, init_ray

    init_ray()
    gpus = int(cluster_gpus()) if num_gpus is None else num_gpus
    actors = max(1, gpus) if gpus else 1
    ds = ray.data.from_items([{"index": i, "prompt": p} for i, p in enumerate(prompts)])
    resources = {"num_gpus": 1} if gpus else {"num_cpus": 1}
    ds = ds.map_batches(_Renderer, batch_size=1, fn_constructor_kwargs={"options": options},
                        compute=ray.data.ActorPoolStrategy(size=actors), **resources)
    from ray_ltx.progress import Progress

    ray.data.DataContext.get_current().enable_progress_bars = False
    progress = Progress(len(prompts), "generate: video", "videos", logger=log)
    rows = []
    for row in ds.iter_rows():
        rows.append(row)
        progress.update(len(rows))
    progress.close()
    return sorted(rows, key=lambda row: row["index"])


def generate_from_args(args) -> list[Path]:
    if not args.prompt and not args.prompts_file:
        raise ConfigError("ray-ltx generate needs --prompt TEXT or --prompts_file FILE")
    if args.image and not Path(args.image).is_file():
        raise ConfigError(f"--image {args.image}: no such file (give the first frame of the video as an image)")
    options = {
        "model": args.model, "base_model": args.base_model, "model_name": args.model_name, "variant": args.variant,
        "lora": args.lora, "lora_scale": args.lora_scale, "dtype": args.dtype, "image": args.image,
        # a Secret: Ray keeps what the batch mode's actors are handed, and it prints redacted
        # resolved here: batch-mode actors on other nodes have neither this MLFLOW_TRACKING_URI nor this ./mlruns
        "tracking_uri": Secret(args.mlflow_tracking_uri or default_tracking_uri()),
        "negative_prompt": args.negative_prompt, "num_frames": args.num_frames, "height": args.height,
        "width": args.width, "steps": args.steps, "guidance_scale": args.guidance_scale, "seed": args.seed,
        "fps": args.fps, "out": args.out,
    }
    if args.prompts_file:
        prompts = [line.strip() for line in Path(args.prompts_file).read_text(encoding="utf-8").splitlines()
                   if line.strip()]
        rows = generate_batch(prompts, options, args.num_gpus)
        for row in rows:
            print(f"{row['path']}: {row['prompt']}")
        return [Path(row["path"]) for row in rows]
    outputs = []
    prompts = args.prompt
    for i, prompt in enumerate(prompts):
        out = args.out if len(prompts) == 1 else str(Path(args.out).with_suffix("")) + f"_{i}.mp4"
        path = generate_video(**{**options, "out": out, "seed": args.seed + i, "prompt": prompt})
        print(f"wrote {path}")
        outputs.append(path)
    return outputs
