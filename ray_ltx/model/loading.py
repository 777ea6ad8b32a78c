"""Loading LTX-Video components through diffusers' ``from_pretrained``.

The same calls load ``Lightricks/LTX-Video`` from the hub, a local copy of it, or the tiny
pipelines the tests write. Weights load only from safetensors and no remote code runs.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch

from ray_ltx.config import Config
from ray_ltx.errors import ConfigError

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def torch_dtype(name: str) -> torch.dtype:
    return DTYPES[name]


def _source(config: Config) -> tuple[str, dict[str, Any]]:
    model = config.model.pretrained_model_name_or_path
    return model, {"revision": config.model.revision} if config.model.revision else {}


def _load(loader: Any, config: Config, what: str, **kwargs: Any) -> Any:
    model, extra = _source(config)
    try:
        return loader(model, **extra, **kwargs)
    except OSError as error:
        raise ConfigError(
            f"--pretrained_model_name_or_path {model}: cannot load the {what} ({error}). Pass a hub id such as "
            "Lightricks/LTX-Video (with network access) or a local directory holding a diffusers LTX-Video pipeline"
        ) from None


def load_transformer(config: Config, dtype: torch.dtype | None = None, device: str | torch.device = "cpu"):
    from diffusers import LTXVideoTransformer3DModel

    model = _load(LTXVideoTransformer3DModel.from_pretrained, config, "transformer", subfolder="transformer",
                  torch_dtype=dtype or torch_dtype(config.model.transformer_dtype), use_safetensors=True)
    return model.to(device)


def load_vae(config: Config, device: str | torch.device = "cpu"):
    from diffusers import AutoencoderKLLTXVideo

    vae = _load(AutoencoderKLLTXVideo.from_pretrained, config, "VAE", subfolder="vae",
                torch_dtype=torch_dtype(config.model.vae_dtype), use_safetensors=True)
    if config.training.enable_slicing:
        vae.enable_slicing()
    if config.training.enable_tiling:
        vae.enable_tiling()
    return vae.to(device).eval().requires_grad_(False)


def load_text_encoder(config: Config, device: str | torch.device = "cpu"):
    from transformers import T5EncoderModel

    encoder = _load(T5EncoderModel.from_pretrained, config, "text encoder", subfolder="text_encoder",
                    torch_dtype=torch_dtype(config.model.text_encoder_dtype), use_safetensors=True)
    return encoder.to(device).eval().requires_grad_(False)


def load_tokenizer(config: Config):
    from transformers import T5TokenizerFast

    return _load(T5TokenizerFast.from_pretrained, config, "tokenizer", subfolder="tokenizer")


def _config_digest(data: dict[str, Any]) -> str:
    clean = {k: v for k, v in data.items() if not k.startswith("_")}
    return hashlib.sha256(json.dumps(clean, sort_keys=True, default=str).encode()).hexdigest()[:16]


def component_digests(config: Config) -> dict[str, str]:
    """Hashes of the VAE, text-encoder and transformer configs: what a latent cache depends on."""
    from diffusers import AutoencoderKLLTXVideo, LTXVideoTransformer3DModel
    from transformers import AutoConfig

    vae = _load(AutoencoderKLLTXVideo.load_config, config, "VAE config", subfolder="vae")
    transformer = _load(LTXVideoTransformer3DModel.load_config, config, "transformer config", subfolder="transformer")
    text = _load(AutoConfig.from_pretrained, config, "text encoder config", subfolder="text_encoder").to_dict()
    for volatile in ("transformers_version", "torch_dtype", "dtype", "_name_or_path"):
        text.pop(volatile, None)
    return {"vae": _config_digest(vae), "text_encoder": _config_digest(text), "transformer": _config_digest(transformer)}
