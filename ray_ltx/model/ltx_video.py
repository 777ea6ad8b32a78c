"""LTX-Video 0.9.x (2B and 13B, dev and distilled, text- and image-to-video) as a ray-ltx model family.

Everything follows diffusers' LTX pipelines, so a model trained here sees at training time what it sees
at inference: latents normalised with the VAE's channel statistics, packed into the transformer's token
layout, a rope interpolation scale from the VAE compression and the frame rate, timesteps of
``sigma * 1000`` (per token when the first frame is a clean condition, as ``LTXConditionPipeline`` and
``LTXImageToVideoPipeline`` feed them).

Versions differ in their VAE (0.9.0: no timestep conditioning; 0.9.1: a timestep-conditioned decoder;
0.9.5 and later: a new encoder as well) and in the transformer's size (2B: 28 layers; 13B, from 0.9.7:
48 layers, 32 heads of 128). They are told apart from the component configs, never from names.
A checkpoint is a diffusers folder, a Hub id, or Lightricks' single-file ``.safetensors`` (its transformer;
the VAE, text encoder, tokenizer and scheduler come from ``--base_model_name_or_path``).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ray_ltx.errors import ConfigError
from ray_ltx.model.family import (
    Batch,
    CheckpointInfo,
    EncodedPrompts,
    LatentSpec,
    ModelFamily,
    PromptEncoder,
    VideoEncoder,
    register,
    torch_dtype,
)
from ray_ltx.model.lora import DIFFUSERS_WEIGHTS

log = logging.getLogger(__name__)

PIPELINE_CLASSES = ("LTXPipeline", "LTXConditionPipeline", "LTXImageToVideoPipeline")
TRANSFORMER_CLASS = "LTXVideoTransformer3DModel"
#: Keys only an LTX-Video single file has (Lightricks' original names).
SINGLE_FILE_MARKERS = ("model.diffusion_model.patchify_proj.weight", "patchify_proj.weight")
_SINGLE_FILE_PREFIX = "model.diffusion_model."
#: The diffusers-format repos matching a single file, as diffusers' own single-file loader picks them.
DEFAULT_BASES = {
    ("0.9.0", "2B"): "diffusers/LTX-Video-0.9.0",
    ("0.9.1", "2B"): "diffusers/LTX-Video-0.9.1",
    ("0.9.5+", "2B"): "Lightricks/LTX-Video-0.9.5",
    ("0.9.5+", "13B"): "Lightricks/LTX-Video-0.9.7-dev",
}
_SIZES = {28: "2B", 48: "13B"}
#: What a distilled checkpoint is run with (Lightricks' inference configs): few steps, no classifier-free guidance.
DISTILLED_INFERENCE = {"num_inference_steps": 8, "guidance_scale": 1.0}
DEV_INFERENCE = {"num_inference_steps": 30, "guidance_scale": 3.0}


@dataclass(frozen=True)
class Version:
    """Which LTX-Video a checkpoint is, read off its component configs."""

    vae: str  # "0.9.0", "0.9.1" or "0.9.5+"
    size: str  # "2B", "13B", or "<N>-layer" for other shapes (tiny test models)
    variant: str  # "dev" or "distilled"

    def __str__(self) -> str:
        variant = " distilled" if self.variant == "distilled" else ""
        return f"LTX-Video {self.vae} ({self.size}{variant})"

    @property
    def timestep_conditioned_vae(self) -> bool:
        return self.vae != "0.9.0"


def vae_generation(vae_config: dict[str, Any]) -> str:
    if any("095" in str(block) for block in vae_config.get("down_block_types") or ()):
        return "0.9.5+"
    return "0.9.1" if vae_config.get("timestep_conditioning") else "0.9.0"


def transformer_size(transformer_config: dict[str, Any]) -> str:
    layers = int(transformer_config.get("num_layers", 28))
    inner = int(transformer_config.get("num_attention_heads", 32)) * int(transformer_config.get("attention_head_dim", 64))
    size = _SIZES.get(layers)
    if size == "2B" and inner == 2048 or size == "13B" and inner == 4096:
        return size
    return f"{layers}-layer"


def single_file_vae_generation(keys: frozenset[str]) -> str | None:
    """The VAE generation of a Lightricks single file by its key names (None: it holds no VAE)."""
    if not any(k.startswith("vae.") for k in keys):
        return None
    if any(k.startswith("vae.encoder.down_blocks.9.") for k in keys):  # 0.9.0/0.9.1 encoders have 10 blocks
        return "0.9.1" if any(k.startswith("vae.decoder.last_time_embedder.") for k in keys) else "0.9.0"
    return "0.9.5+"


def single_file_layers(keys: frozenset[str]) -> int:
    blocks = {int(k.split(".")[3]) for k in keys if k.startswith(_SINGLE_FILE_PREFIX + "transformer_blocks.")}
    return max(blocks) + 1 if blocks else 0


def _digest(data: dict[str, Any]) -> str:
    clean = {k: v for k, v in data.items() if not k.startswith("_")}
    return hashlib.sha256(json.dumps(clean, sort_keys=True, default=str).encode()).hexdigest()[:16]


def auto_dtype(name: str, device: torch.device, what: str) -> torch.dtype:
    """``auto``: bf16 on a GPU, fp32 on the CPU, where bf16 3D convolutions run ~100x slower."""
    if name != "auto":
        return torch_dtype(name)
    if device.type == "cuda":
        return torch.bfloat16
    if what not in _CPU_FP32_SAID:
        _CPU_FP32_SAID.add(what)
        log.info("%s on the CPU: computing in fp32 (bf16 convolutions are ~100x slower there); pass an explicit "
                 "dtype to override", what)
    return torch.float32


_CPU_FP32_SAID: set[str] = set()


def pack_latents(latents: torch.Tensor, patch_size: int = 1, patch_size_t: int = 1) -> torch.Tensor:
    """(B, C, F, H, W) -> (B, tokens, C * p_t * p * p), the transformer's token layout."""
    b, c, f, h, w = latents.shape
    latents = latents.reshape(b, c, f // patch_size_t, patch_size_t, h // patch_size, patch_size,
                              w // patch_size, patch_size)
    return latents.permute(0, 2, 4, 6, 1, 3, 5, 7).flatten(4, 7).flatten(1, 3)


def unpack_latents(tokens: torch.Tensor, shape: Sequence[int], patch_size: int = 1, patch_size_t: int = 1) -> torch.Tensor:
    """The inverse of :func:`pack_latents`: (B, tokens, C * p_t * p * p) -> (B, C, F, H, W)."""
    b, c, f, h, w = shape
    x = tokens.reshape(b, f // patch_size_t, h // patch_size, w // patch_size, c, patch_size_t, patch_size, patch_size)
    return x.permute(0, 4, 1, 5, 2, 6, 3, 7).reshape(b, c, f, h, w)


def rope_interpolation_scale(spec: LatentSpec, frame_rate: float) -> tuple[float, float, float]:
    return (spec.temporal_compression / frame_rate, float(spec.spatial_compression), float(spec.spatial_compression))


_FRAME_TIMESTEPS = "_ray_ltx_frame_timesteps"


def _unwrap(module: nn.Module) -> nn.Module:
    """The transformer inside a DDP or DeepSpeed wrapper."""
    return getattr(module, "module", module)


def frame_modulated_block_forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor,
                                  temb: torch.Tensor, image_rotary_emb=None,
                                  encoder_attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """``LTXVideoTransformerBlock.forward`` with the AdaLN modulation applied per group of tokens.

    ``temb`` is (B, G, 6 * D) for G groups of consecutive tokens: G = 1 (one timestep per sample) and G = tokens
    are exactly diffusers' computation; G = latent frames is image-to-video training, where a clean first frame
    has timestep 0. Broadcasting per frame instead of materialising six (B, tokens, D) modulation tensors per
    block is what keeps image-to-video within a few percent of text-to-video in time and memory.
    """
    b, t, d = hidden_states.shape
    groups = temb.size(1)
    ada = self.scale_shift_table[None, None].to(temb.device) + temb.reshape(b, groups, self.scale_shift_table.shape[0], -1)
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = ada.unbind(dim=2)

    def grouped(x: torch.Tensor) -> torch.Tensor:
        return x.view(b, groups, t // groups, d)

    def modulate(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        return (grouped(x) * (1 + scale[:, :, None]) + shift[:, :, None]).view(b, t, d)

    attn = self.attn1(hidden_states=modulate(self.norm1(hidden_states), scale_msa, shift_msa),
                      encoder_hidden_states=None, image_rotary_emb=image_rotary_emb)
    hidden_states = hidden_states + (grouped(attn) * gate_msa[:, :, None]).view(b, t, d)
    attn = self.attn2(hidden_states, encoder_hidden_states=encoder_hidden_states, image_rotary_emb=None,
                      attention_mask=encoder_attention_mask)
    hidden_states = hidden_states + attn
    ff = self.ff(modulate(self.norm2(hidden_states), scale_mlp, shift_mlp))
    return hidden_states + (grouped(ff) * gate_mlp[:, :, None]).view(b, t, d)


def frame_timestep_forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor,
                           timestep: torch.Tensor, encoder_attention_mask: torch.Tensor, num_frames: int | None = None,
                           height: int | None = None, width: int | None = None, rope_interpolation_scale=None,
                           video_coords=None, attention_kwargs=None, return_dict: bool = True):
    """``LTXVideoTransformer3DModel.forward`` that also takes one timestep per latent frame, (B, frames).

    Other timestep shapes (per sample, per token) go to diffusers' own forward unchanged, so inference and
    text-to-video training run diffusers' code. Installed on the instance, it runs inside DDP, ZeRO and FSDP
    wrappers like the original.
    """
    tokens = hidden_states.size(1)
    if timestep.ndim != 2 or timestep.size(1) != num_frames or num_frames == tokens:
        return type(self).forward(self, hidden_states, encoder_hidden_states, timestep, encoder_attention_mask,
                                  num_frames, height, width, rope_interpolation_scale, video_coords, attention_kwargs,
                                  return_dict)
    image_rotary_emb = self.rope(hidden_states, num_frames, height, width, rope_interpolation_scale, video_coords)
    if encoder_attention_mask is not None and encoder_attention_mask.ndim == 2:
        encoder_attention_mask = ((1 - encoder_attention_mask.to(hidden_states.dtype)) * -10000.0).unsqueeze(1)
    b = hidden_states.size(0)
    hidden_states = self.proj_in(hidden_states)
    temb, embedded = self.time_embed(timestep.flatten(), batch_size=b, hidden_dtype=hidden_states.dtype)
    temb, embedded = temb.view(b, num_frames, -1), embedded.view(b, num_frames, -1)
    encoder_hidden_states = self.caption_projection(encoder_hidden_states).view(b, -1, hidden_states.size(-1))
    for block in self.transformer_blocks:
        if torch.is_grad_enabled() and self.gradient_checkpointing:
            hidden_states = self._gradient_checkpointing_func(block, hidden_states, encoder_hidden_states, temb,
                                                              image_rotary_emb, encoder_attention_mask)
        else:
            hidden_states = block(hidden_states=hidden_states, encoder_hidden_states=encoder_hidden_states, temb=temb,
                                  image_rotary_emb=image_rotary_emb, encoder_attention_mask=encoder_attention_mask)
    scale_shift = self.scale_shift_table[None, None] + embedded[:, :, None]
    shift, scale = scale_shift[:, :, 0], scale_shift[:, :, 1]
    d = hidden_states.size(-1)
    hidden_states = self.norm_out(hidden_states).view(b, num_frames, -1, d)
    hidden_states = (hidden_states * (1 + scale[:, :, None]) + shift[:, :, None]).view(b, tokens, d)
    output = self.proj_out(hidden_states)
    if not return_dict:
        return (output,)
    from diffusers.models.modeling_outputs import Transformer2DModelOutput

    return Transformer2DModelOutput(sample=output)


def enable_frame_timesteps(transformer: nn.Module) -> None:
    """Install the per-frame timestep path on a loaded LTX-Video transformer (idempotent)."""
    import types

    if getattr(transformer, _FRAME_TIMESTEPS, False):
        return
    for block in transformer.transformer_blocks:
        block.forward = types.MethodType(frame_modulated_block_forward, block)
    transformer.forward = types.MethodType(frame_timestep_forward, transformer)
    setattr(transformer, _FRAME_TIMESTEPS, True)


class LTXVideoEncoder(VideoEncoder):
    def __init__(self, vae: nn.Module, dtype: torch.dtype):
        self.vae, self.dtype = vae, dtype
        self.device = next(vae.parameters()).device
        self.latent_spec = LatentSpec(
            latent_channels=int(vae.config.latent_channels),
            spatial_compression=int(vae.spatial_compression_ratio),
            temporal_compression=int(vae.temporal_compression_ratio),
            scaling_factor=float(vae.config.scaling_factor),
            latents_mean=tuple(float(x) for x in vae.latents_mean.flatten()),
            latents_std=tuple(float(x) for x in vae.latents_std.flatten()),
        )

    @torch.inference_mode()
    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        video = frames.to(self.device, non_blocking=True).permute(0, 4, 1, 2, 3).to(self.dtype).div_(127.5).sub_(1.0)
        return self.vae.encode(video).latent_dist.mode()


class T5PromptEncoder(PromptEncoder):
    """T5 embeddings as ``LTXPipeline.encode_prompt`` makes them: padded to max length, encoder run without mask."""

    def __init__(self, tokenizer, text_encoder: nn.Module):
        self.tokenizer, self.text_encoder = tokenizer, text_encoder
        self.device = next(text_encoder.parameters()).device

    @torch.inference_mode()
    def encode(self, prompts: Sequence[str], max_length: int) -> EncodedPrompts:
        prompts = list(prompts)
        inputs = self.tokenizer(prompts, padding="max_length", max_length=max_length, truncation=True,
                                add_special_tokens=True, return_tensors="pt")
        full_lengths = [len(ids) for ids in self.tokenizer(prompts, add_special_tokens=True)["input_ids"]]
        # LTXPipeline runs the encoder without the attention mask; do the same so training sees what inference sees.
        embeds = self.text_encoder(inputs.input_ids.to(self.device))[0]
        return EncodedPrompts(embeds, inputs.attention_mask.bool(), [n > max_length for n in full_lengths])


@register
class LTXVideoFamily(ModelFamily):
    name = "ltx_video"
    title = "LTX-Video 0.9.x: LTXPipeline, LTXConditionPipeline, LTXImageToVideoPipeline"
    supports_first_frame_conditioning = True
    default_target_modules = ("to_q", "to_k", "to_v", "to_out.0")
    hub_prefixes = ("lightricks/ltx-video", "diffusers/ltx-video", "a-r-r-o-w/ltx-video")

    @classmethod
    def recognizes(cls, info: CheckpointInfo) -> bool:
        if info.kind == "hub" and info.source.lower().startswith(cls.hub_prefixes):
            return True
        if info.kind == "single_file":
            return any(key in info.single_file_keys for key in SINGLE_FILE_MARKERS) and not any(
                "audio" in key for key in info.single_file_keys)
        if info.model_index and info.model_index.get("_class_name") in PIPELINE_CLASSES:
            return True
        return bool(info.transformer_config and info.transformer_config.get("_class_name") == TRANSFORMER_CLASS)

    def __init__(self, config, info: CheckpointInfo | None = None):
        super().__init__(config, info)
        model = config.model
        self.single_file = model.pretrained_model_name_or_path.endswith(".safetensors")
        self._configs: dict[str, dict[str, Any]] = {}

    # -- where each component comes from -----------------------------------------------------------

    @property
    def base(self) -> str:
        """The diffusers folder or Hub id that holds the VAE, text encoder, tokenizer, scheduler and configs."""
        model = self.config.model
        if not self.single_file:
            return model.pretrained_model_name_or_path
        if model.base_model_name_or_path:
            return model.base_model_name_or_path
        keys = self.info.single_file_keys if self.info else frozenset()
        layers = single_file_layers(keys)
        key = (single_file_vae_generation(keys) or "0.9.5+", _SIZES.get(layers, "2B"))
        base = DEFAULT_BASES.get(key, "Lightricks/LTX-Video-0.9.5")
        if key[1] == "13B" and "distilled" in model.pretrained_model_name_or_path.lower():
            base = "Lightricks/LTX-Video-0.9.7-distilled"
        return base

    def _from_base(self, loader: Any, what: str, **kwargs: Any) -> Any:
        revision = self.config.model.revision
        extra = {"revision": revision} if revision and not self.single_file else {}
        try:
            return loader(self.base, **extra, **kwargs)
        except OSError as error:
            flag = "--base_model_name_or_path" if self.single_file else "--pretrained_model_name_or_path"
            raise ConfigError(
                f"{flag} {self.base}: cannot load the {what} ({error}). Pass a Hub id such as Lightricks/LTX-Video "
                "(with network access) or a local directory holding a diffusers LTX-Video pipeline") from None

    def component_config(self, component: str) -> dict[str, Any]:
        if component not in self._configs:
            if component == "text_encoder":
                from transformers import AutoConfig

                data = self._from_base(AutoConfig.from_pretrained, "text encoder config", subfolder=component).to_dict()
                for volatile in ("transformers_version", "torch_dtype", "dtype", "_name_or_path"):
                    data.pop(volatile, None)
            else:
                from diffusers import AutoencoderKLLTXVideo, LTXVideoTransformer3DModel

                cls = AutoencoderKLLTXVideo if component == "vae" else LTXVideoTransformer3DModel
                data = dict(self._from_base(cls.load_config, f"{component} config", subfolder=component))
            self._configs[component] = data
        return self._configs[component]

    @property
    def version(self) -> Version:
        variant = self.config.model.model_variant
        if variant == "auto":
            variant = "distilled" if "distilled" in self.config.model.pretrained_model_name_or_path.lower() else "dev"
        return Version(vae_generation(self.component_config("vae")), self._transformer_size(), variant)

    def _transformer_size(self) -> str:
        if self.single_file and self.info:
            layers = single_file_layers(self.info.single_file_keys)
            inner = self._single_file_inner_dim()
            return _SIZES.get(layers, f"{layers}-layer") if (layers, inner) in ((28, 2048), (48, 4096)) \
                else f"{layers}-layer"
        return transformer_size(self.component_config("transformer"))

    def _single_file_inner_dim(self) -> int | None:
        from safetensors import safe_open

        with safe_open(self.config.model.pretrained_model_name_or_path, framework="pt") as handle:
            for key in SINGLE_FILE_MARKERS:
                if key in handle.keys():  # noqa: SIM118 - safe_open has no __contains__
                    return int(handle.get_slice(key).get_shape()[0])
        return None

    # -- identity ---------------------------------------------------------------------------------

    def describe(self) -> str:
        return str(self.version)

    def fingerprint(self) -> dict[str, Any]:
        return {
            "family": self.name,
            "model_version": self.version.vae,
            "vae_config": _digest(self.component_config("vae")),
            "text_encoder_config": _digest(self.component_config("text_encoder")),
        }

    def check_training(self) -> None:
        super().check_training()
        if self.single_file:
            self.check_single_file()

    def check_single_file(self) -> None:
        """A single file must hold the transformer the base's config describes, and a VAE of its generation."""
        keys = self.info.single_file_keys if self.info else frozenset()
        path = self.config.model.pretrained_model_name_or_path
        base_transformer = self.component_config("transformer")
        layers, inner = single_file_layers(keys), self._single_file_inner_dim()
        want_layers = int(base_transformer.get("num_layers", 28))
        want_inner = int(base_transformer.get("num_attention_heads", 32)) * int(base_transformer.get("attention_head_dim", 64))
        problems = []
        if (layers, inner) != (want_layers, want_inner):
            problems.append(f"its transformer has {layers} layers of width {inner}, the base's config describes "
                            f"{want_layers} layers of width {want_inner}")
        file_vae, base_vae = single_file_vae_generation(keys), vae_generation(self.component_config("vae"))
        if file_vae is not None and file_vae != base_vae:
            problems.append(f"it holds an LTX-Video {file_vae} VAE, the base has an LTX-Video {base_vae} VAE (the "
                            "latents would not be the ones the transformer was trained on)")
        if problems:
            raise ConfigError(
                f"--pretrained_model_name_or_path {path} does not match --base_model_name_or_path {self.base}: "
                + "; ".join(problems) + ". Pass the diffusers folder or Hub id of the same LTX-Video version as "
                "--base_model_name_or_path (e.g. Lightricks/LTX-Video-0.9.7-dev for a 13B 0.9.7 file)")

    # -- loading --------------------------------------------------------------------------------------

    def load_transformer(self, dtype: torch.dtype, device: str | torch.device = "cpu") -> nn.Module:
        from diffusers import LTXVideoTransformer3DModel

        if self.single_file:
            self.check_single_file()
            model = LTXVideoTransformer3DModel.from_single_file(
                self.config.model.pretrained_model_name_or_path, config=self.base, subfolder="transformer",
                dtype=dtype)
        else:
            model = self._from_base(LTXVideoTransformer3DModel.from_pretrained, "transformer", subfolder="transformer",
                                    dtype=dtype, use_safetensors=True)
        return model.to(device)

    def load_vae(self, device: torch.device, dtype: torch.dtype | None = None) -> nn.Module:
        from diffusers import AutoencoderKLLTXVideo

        dtype = dtype or auto_dtype(self.config.model.vae_dtype, device, "the VAE")
        vae = self._from_base(AutoencoderKLLTXVideo.from_pretrained, "VAE", subfolder="vae", dtype=dtype,
                              use_safetensors=True)
        if self.config.training.enable_slicing:
            vae.enable_slicing()
        if self.config.training.enable_tiling:
            vae.enable_tiling()
        return vae.to(device).eval().requires_grad_(False)

    def load_text_encoder(self, device: torch.device) -> nn.Module:
        from transformers import T5EncoderModel

        dtype = auto_dtype(self.config.model.text_encoder_dtype, device, "the text encoder")
        encoder = self._from_base(T5EncoderModel.from_pretrained, "text encoder", subfolder="text_encoder",
                                  torch_dtype=dtype, use_safetensors=True)
        return encoder.to(device).eval().requires_grad_(False)

    def load_tokenizer(self):
        from transformers import T5TokenizerFast

        return self._from_base(T5TokenizerFast.from_pretrained, "tokenizer", subfolder="tokenizer")

    def video_encoder(self, device: torch.device) -> VideoEncoder:
        vae = self.load_vae(device)
        return LTXVideoEncoder(vae, next(vae.parameters()).dtype)

    def prompt_encoder(self, device: torch.device) -> PromptEncoder:
        return T5PromptEncoder(self.load_tokenizer(), self.load_text_encoder(device))

    def transformer_blocks(self, transformer: nn.Module) -> Sequence[nn.Module]:
        return transformer.transformer_blocks

    def prepare_for_training(self, transformer: nn.Module) -> None:
        """Per-frame timesteps for image-to-video training (see :func:`frame_timestep_forward`)."""
        enable_frame_timesteps(transformer)

    # -- the transformer call -------------------------------------------------------------------

    def predict(self, transformer: nn.Module, noisy: torch.Tensor, sigmas: torch.Tensor, batch: Batch,
                spec: LatentSpec, frame_rate: float) -> torch.Tensor:
        b, _, f, h, w = noisy.shape
        p, pt = spec.patch_size, spec.patch_size_t
        timestep = sigmas * 1000.0
        if timestep.ndim == 2 and not getattr(_unwrap(transformer), _FRAME_TIMESTEPS, False):
            # per latent frame -> per token, in the packed (frame, row, column) order, as the pipelines pass it
            timestep = timestep.repeat_interleave((h // p) * (w // p), dim=1)
        tokens = transformer(
            hidden_states=pack_latents(noisy, p, pt),
            encoder_hidden_states=batch.prompt_embeds,
            timestep=timestep,
            encoder_attention_mask=batch.prompt_attention_mask,
            num_frames=f // pt,
            height=h // p,
            width=w // p,
            rope_interpolation_scale=rope_interpolation_scale(spec, frame_rate),
            return_dict=False,
        )[0]
        return unpack_latents(tokens, noisy.shape, p, pt)

    # -- LoRA and export --------------------------------------------------------------------------

    def save_lora(self, directory: Path, layers: dict[str, torch.Tensor], adapter_metadata: dict[str, Any]) -> Path:
        from diffusers import LTXPipeline

        LTXPipeline.save_lora_weights(str(directory), transformer_lora_layers=layers,
                                      transformer_lora_adapter_metadata=adapter_metadata, safe_serialization=True)
        return Path(directory) / DIFFUSERS_WEIGHTS

    # -- inference ------------------------------------------------------------------------------

    def pipeline_class(self, image_to_video: bool):
        import diffusers

        if not image_to_video:
            return diffusers.LTXPipeline
        # 0.9.5 and later were trained for (and are documented with) the condition pipeline.
        return diffusers.LTXConditionPipeline if self.version.vae == "0.9.5+" else diffusers.LTXImageToVideoPipeline

    def pipeline(self, device: torch.device, dtype: torch.dtype, transformer: nn.Module | None = None,
                 image_to_video: bool = False):
        from diffusers import FlowMatchEulerDiscreteScheduler

        cls = self.pipeline_class(image_to_video)
        if transformer is None and not self.single_file:
            pipe = self._from_base(cls.from_pretrained, "pipeline", dtype=dtype, use_safetensors=True)
            return pipe.to(device)
        if transformer is None:
            transformer = self.load_transformer(dtype, device)
        scheduler = self._from_base(FlowMatchEulerDiscreteScheduler.from_pretrained, "scheduler", subfolder="scheduler")
        vae = self.load_vae(device, dtype if device.type == "cuda" else None)
        return cls(scheduler=scheduler, vae=vae, text_encoder=self.load_text_encoder(device),
                   tokenizer=self.load_tokenizer(), transformer=transformer)

    def pipeline_kwargs(self) -> dict[str, Any]:
        if not self.version.timestep_conditioned_vae:
            return {}
        v = self.config.validation
        return {"decode_timestep": 0.05 if v.decode_timestep is None else v.decode_timestep,
                "decode_noise_scale": 0.025 if v.decode_noise_scale is None else v.decode_noise_scale}

    def inference_defaults(self) -> dict[str, Any]:
        return dict(DISTILLED_INFERENCE if self.version.variant == "distilled" else DEV_INFERENCE)
