"""LoRA on the LTX-Video transformer: injection with PEFT and export in the formats users load.

- diffusers: ``pytorch_lora_weights.safetensors`` with keys ``transformer.<module>.lora_A.weight``
  and the adapter's LoraConfig in the safetensors metadata, read by
  ``LTXPipeline.load_lora_weights(dir)`` (so rank and alpha come back as trained).
- ComfyUI: the key layout ComfyUI's LTX-Video LoRA loader (``LoraLoaderModelOnly`` on an LTXV
  model) reads, ``diffusion_model.<module>.lora_A.weight`` / ``lora_B.weight``, with the
  alpha/rank scale folded into ``lora_B`` so no ``.alpha`` key is needed. diffusers reads this
  layout too (its non-diffusers LTX-Video conversion), which is how the round trip is tested.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ray_ltx.config import Config

ADAPTER = "default"
DIFFUSERS_WEIGHTS = "pytorch_lora_weights.safetensors"
COMFYUI_WEIGHTS = "comfyui_lora_weights.safetensors"


def lora_config(config: Config, exclude: str | None = None):
    """The adapter's LoraConfig. With ``exclude`` (a regex of module names kept frozen: the family's
    ``frozen_modules``) the targets become one regex naming exactly the adapted layers, so the LoRA's metadata
    describes it as trained and loaders place it on those layers only."""
    from peft import LoraConfig

    training = config.training
    targets: list[str] | str = list(training.target_modules)
    if exclude:  # PEFT's suffix match of a name list, as a full-match regex, minus the excluded names
        targets = rf"(?!{exclude}$)(?:.*\.)?(?:{'|'.join(re.escape(t) for t in targets)})"
    return LoraConfig(
        r=training.rank,
        lora_alpha=training.lora_alpha,
        target_modules=targets,
        init_lora_weights=True,
    )


def add_lora(transformer: nn.Module, config: Config, exclude: str | None = None) -> int:
    """Freeze the transformer, add a LoRA adapter, keep its weights in fp32; returns trainable parameters.

    LoRA weights stay fp32 (the base may be bf16 or float8) so small updates are not rounded away;
    the forward runs under autocast in the compute dtype.
    """
    transformer.requires_grad_(False)
    transformer.add_adapter(lora_config(config, exclude), adapter_name=ADAPTER)
    count = 0
    for name, param in transformer.named_parameters():
        if ".lora_" in name:
            param.data = param.data.float()
            param.requires_grad_(True)
            count += param.numel()
    if count == 0:
        raise ValueError(f"--target_modules {config.training.target_modules} matched no layer of the transformer")
    return count


def peft_state_dict(model: nn.Module, trainable: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Trainable parameter names (``...lora_A.default.weight``) -> PEFT's saved names (``...lora_A.weight``),
    through PEFT's own state-dict API (``model`` carries the adapter's config)."""
    from peft import get_peft_model_state_dict

    # PEFT picks the adapter's entries by the model's module names; under activation checkpointing or compiled
    # blocks those carry wrapper segments that consolidated state dicts (FSDP, DeepSpeed) leave out.
    own_names = {_unwrapped(name): name for name, _ in model.named_parameters()}
    keyed = {own_names.get(name, name): tensor for name, tensor in trainable.items()}
    saved = get_peft_model_state_dict(model, state_dict=keyed, adapter_name=ADAPTER)
    return {_unwrapped(name): tensor for name, tensor in saved.items()}


WRAPPER_SEGMENTS = ("_checkpoint_wrapped_module.", "_orig_mod.", "_fsdp_wrapped_module.")


def _unwrapped(name: str) -> str:
    for segment in WRAPPER_SEGMENTS:
        name = name.replace(segment, "")
    return name


def adapter_metadata(config: Config, exclude: str | None = None) -> dict[str, Any]:
    metadata = lora_config(config, exclude).to_dict()
    if not isinstance(metadata["target_modules"], str):
        metadata["target_modules"] = sorted(metadata["target_modules"])
    return _jsonable(metadata)


def save_diffusers_lora(output_dir: str | Path, model: nn.Module, weights: dict[str, torch.Tensor], config: Config,
                        family, dtype: torch.dtype | None = None) -> Path:
    """Write ``pytorch_lora_weights.safetensors`` as the family's pipeline ``save_lora_weights`` does, marked with the
    family and model it was trained for (so ``generate`` can refuse it for another model)."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from ray_ltx.model.family import LORA_FAMILY_KEY, LORA_MODEL_KEY

    layers = {k: (v.to(dtype) if dtype else v).contiguous() for k, v in peft_state_dict(model, weights).items()}
    if not layers:
        raise RuntimeError(f"no LoRA weights among the {len(weights)} trainable tensors (first: {sorted(weights)[:2]})")
    path = family.save_lora(Path(output_dir), layers, adapter_metadata(config, family.frozen_modules()))
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    save_file(load_file(str(path)), str(path),
              metadata={**metadata, LORA_FAMILY_KEY: family.name, LORA_MODEL_KEY: family.describe()})
    return path


def _jsonable(data: dict[str, Any]) -> dict[str, Any]:
    return {k: (sorted(v) if isinstance(v, set) else v) for k, v in data.items()}


def to_comfyui(diffusers_weights: dict[str, torch.Tensor], rank: int, alpha: float,
               prefix: str = "diffusion_model.") -> dict[str, torch.Tensor]:
    """diffusers keys (``transformer.``) -> ComfyUI keys (``diffusion_model.``), alpha/rank folded into lora_B."""
    scale = alpha / rank
    out = {}
    for key, tensor in diffusers_weights.items():
        name = prefix + key.removeprefix("transformer.")
        out[name] = tensor * scale if ".lora_B." in key else tensor
    return {k: v.contiguous() for k, v in out.items()}


def export_comfyui(lora_dir: str | Path, out_path: str | Path | None = None, prefix: str = "diffusion_model.") -> Path:
    """Write the ComfyUI layout of the diffusers LoRA in ``lora_dir`` (beside it unless ``out_path``); ``prefix`` is
    the model family's ``comfyui_prefix`` (``diffusion_model.`` for LTX-Video and LTX-2)."""
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    lora_dir = Path(lora_dir)
    source = lora_dir / DIFFUSERS_WEIGHTS
    with safe_open(str(source), framework="pt") as handle:
        weights = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118 - safe_open has no __iter__
        metadata = handle.metadata() or {}
    # diffusers stores the LoraConfig as JSON under "lora_adapter_metadata", keys prefixed "transformer.".
    adapter = json.loads(metadata.get("lora_adapter_metadata", "{}"))
    rank = int(adapter.get("transformer.r") or next(v.shape[0] for k, v in weights.items() if ".lora_A." in k))
    alpha = float(adapter.get("transformer.lora_alpha") or rank)
    out_path = Path(out_path) if out_path else lora_dir / COMFYUI_WEIGHTS
    save_file(to_comfyui(weights, rank, alpha, prefix), str(out_path), metadata={"format": "pt", "rank": str(rank)})
    return out_path
