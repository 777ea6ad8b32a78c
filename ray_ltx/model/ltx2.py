"""LTX-2 (Lightricks' audio-video model) as a ray-ltx model family: video, or audio and video jointly.

Everything follows diffusers' LTX-2 pipelines (``LTX2Pipeline``, ``LTX2ImageToVideoPipeline``), so training feeds the
transformer what inference feeds it:

- Prompts: Gemma 3's hidden states of every layer (the prompt stripped, left-padded to ``max_sequence_length``, 1024
  tokens by default as in the pipeline) through the text connectors, which make a video and an audio context. Both are
  cached, concatenated on the feature axis, so caption dropout swaps both for the empty prompt's.
- Video: the LTX-2 video VAE (32x spatial, 8x temporal), latents normalised with its channel statistics and packed as
  the pipeline packs them; timesteps are sigma * 1000, per token when the first frame is a clean condition (as
  ``LTX2ImageToVideoPipeline`` feeds them), with the sample's timestep for the audio stream, the prompt modulation
  and the cross-modal modulation (``use_cross_timestep``, the pipeline's default), at the pipeline's frame rate.
- Audio: diffusers' transformer always runs its audio stream. Without audio (``--audio off``, or a clip without a
  track) the stream gets what ``LTX2Pipeline`` starts from when it is given no audio: Gaussian noise latents as long
  as the clip, at the video's timestep; the audio stream and both audio-video bridges then stay frozen
  (:meth:`LTX2Family.frozen_modules`). With ``--audio on|required`` a clip's audio latents (the audio VAE's, packed
  and normalised as the pipeline does) are noised at the video's sigma and learned too: video loss + audio loss, as
  Lightricks' LTX-2 trainer does; LoRA targets may then include the audio branch.

A checkpoint is a diffusers folder, a Hub id (``Lightricks/LTX-2``) or Lightricks' single file (its transformer; the
other components come from ``--base_model_name_or_path``, by default ``Lightricks/LTX-2``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ray_ltx.errors import ConfigError
from ray_ltx.model.family import (
    AudioEncoder,
    Batch,
    CheckpointInfo,
    EncodedPrompts,
    JointLatents,
    LatentSpec,
    ModelFamily,
    PromptEncoder,
    VideoEncoder,
    register,
)
from ray_ltx.model.lora import DIFFUSERS_WEIGHTS
from ray_ltx.model.ltx_video import LTXVideoEncoder, _digest, auto_dtype, pack_latents, unpack_latents

log = logging.getLogger(__name__)

PIPELINE_CLASSES = ("LTX2Pipeline", "LTX2ImageToVideoPipeline", "LTX2ConditionPipeline")
TRANSFORMER_CLASS = "LTX2VideoTransformer3DModel"
#: Keys only an LTX-2 single file has (Lightricks' original names, with or without the checkpoint prefix).
SINGLE_FILE_MARKERS = ("model.diffusion_model.audio_patchify_proj.weight", "audio_patchify_proj.weight")
DEFAULT_BASE = "Lightricks/LTX-2"
#: The extras (cache and Batch) of the audio stream: its latents (L, C * mel bins) and whether the clip has audio.
AUDIO = "audio_latents"
AUDIO_PRESENT = "audio_present"
#: The audio stream and both audio-video bridges (a2v/v2a attention and their modulation), frozen in video-only
#: training: fed noise there, training them would teach the video to read noise.
AUDIO_BRANCH = r".*(audio|a2v|av_cross_attn).*"
#: n_fft of Lightricks' LTX-2 audio processor (16 kHz, hop 160, 64 mel bins come from the audio VAE's config).
AUDIO_N_FFT = 1024
DEV_INFERENCE = {"num_inference_steps": 30, "guidance_scale": 3.0}  # LTX2Pipeline's defaults
DISTILLED_INFERENCE = {"num_inference_steps": 8, "guidance_scale": 1.0}


def audio_latent_frames(num_frames: int, frame_rate: float, audio_vae_config: dict[str, Any]) -> int:
    """Audio latents of a clip of ``num_frames`` frames at ``frame_rate``, as ``LTX2Pipeline`` sizes them."""
    from diffusers.models.autoencoders.autoencoder_kl_ltx2_audio import LATENT_DOWNSAMPLE_FACTOR

    per_second = audio_vae_config["sample_rate"] / audio_vae_config["mel_hop_length"] / LATENT_DOWNSAMPLE_FACTOR
    return round(num_frames / frame_rate * per_second)


class GemmaPromptEncoder(PromptEncoder):
    """Captions -> [video context | audio context] and the connectors' mask, by ``LTX2Pipeline``'s own code.

    What is cached: the connectors' outputs, i.e. exactly what the pipeline hands the transformer for a prompt. The
    text encoder and the connectors stay frozen whatever is trained (LoRA and full finetuning touch the transformer
    only), so nothing trainable is frozen into the cache. Caching Gemma's hidden states instead would store 49 layers
    of them per token, and running the ~1.4B-parameter connectors every step would change nothing they compute.
    """

    def __init__(self, pipe):
        self.pipe = pipe
        self.device = next(pipe.text_encoder.parameters()).device

    @torch.inference_mode()
    def encode(self, prompts: Sequence[str], max_length: int) -> EncodedPrompts:
        prompts = [p.strip() for p in prompts]
        embeds, mask, _, _ = self.pipe.encode_prompt(prompts, do_classifier_free_guidance=False,
                                                     max_sequence_length=max_length, device=self.device)
        video, audio, context_mask = self.pipe.connectors(embeds, mask, padding_side=self.pipe.tokenizer.padding_side)
        lengths = [len(ids) for ids in self.pipe.tokenizer(prompts, add_special_tokens=True)["input_ids"]]
        return EncodedPrompts(torch.cat([video, audio], dim=-1), context_mask.bool(), [n > max_length for n in lengths])


class LTX2AudioEncoder(AudioEncoder):
    """Waveforms -> the audio stream's latents: log-mel, audio VAE (posterior mode), packed and normalised as
    ``LTX2Pipeline.prepare_audio_latents`` does with given audio latents, trimmed to the pipeline's length."""

    def __init__(self, vae: nn.Module):
        self.vae = vae
        self.config = dict(vae.config)
        self.device, self.dtype = next(vae.parameters()).device, next(vae.parameters()).dtype
        self.width = self.config["latent_channels"] * (self.config["mel_bins"] // vae.mel_compression_ratio)

    @torch.inference_mode()
    def encode(self, waveform: torch.Tensor | None, num_frames: int, frame_rate: float) -> dict[str, torch.Tensor]:
        from ray_ltx.data.audio import log_mel_spectrogram

        length = audio_latent_frames(num_frames, frame_rate, self.config)
        if waveform is None:
            return {AUDIO: torch.zeros(length, self.width), AUDIO_PRESENT: torch.tensor(False)}
        mel = log_mel_spectrogram(waveform.to(self.device), self.config["sample_rate"], self.config["mel_hop_length"],
                                  self.config["mel_bins"], AUDIO_N_FFT)
        latents = self.vae.encode(mel[None].to(self.dtype)).latent_dist.mode()  # (1, C, L', M)
        packed = latents.transpose(1, 2).flatten(2, 3)[0].float()  # (L', C * M)
        normalised = (packed - self.vae.latents_mean.float()) / self.vae.latents_std.float()
        if normalised.shape[0] < length:
            raise ValueError(f"the audio VAE made {normalised.shape[0]} latents of {waveform.shape[-1]} samples, "
                             f"fewer than the pipeline's {length}")
        return {AUDIO: normalised[:length].cpu(), AUDIO_PRESENT: torch.tensor(True)}


@register
class LTX2Family(ModelFamily):
    name = "ltx2"
    title = "LTX-2: LTX2Pipeline, LTX2ImageToVideoPipeline, LTX2ConditionPipeline"
    supports_first_frame_conditioning = True
    supports_audio = True
    default_max_sequence_length = 1024  # LTX2Pipeline pads every prompt to 1024 Gemma tokens
    # Lightricks' LTX-2 trainer writes ComfyUI LoRAs as diffusion_model.<ltx-core module>.lora_A/B.weight, and
    # diffusers' LTX-2 loader reads that layout back (its non-diffusers conversion).
    comfyui_prefix = "diffusion_model."
    hub_prefixes = ("lightricks/ltx-2",)

    @classmethod
    def recognizes(cls, info: CheckpointInfo) -> bool:
        if info.kind == "hub" and info.source.lower().startswith(cls.hub_prefixes):
            return True
        if info.kind == "single_file":
            return any(key in info.single_file_keys for key in SINGLE_FILE_MARKERS)
        if info.model_index and info.model_index.get("_class_name") in PIPELINE_CLASSES:
            return True
        return bool(info.transformer_config and info.transformer_config.get("_class_name") == TRANSFORMER_CLASS)

    def __init__(self, config, info: CheckpointInfo | None = None):
        super().__init__(config, info)
        self.single_file = config.model.pretrained_model_name_or_path.endswith(".safetensors")
        self._configs: dict[str, dict[str, Any]] = {}

    # -- where each component comes from -----------------------------------------------------------

    @property
    def base(self) -> str:
        """The diffusers folder or Hub id holding every component but a single file's transformer."""
        model = self.config.model
        if not self.single_file:
            return model.pretrained_model_name_or_path
        return model.base_model_name_or_path or DEFAULT_BASE

    def _from_base(self, loader: Any, what: str, **kwargs: Any) -> Any:
        revision = self.config.model.revision
        extra = {"revision": revision} if revision and not self.single_file else {}
        try:
            return loader(self.base, **extra, **kwargs)
        except OSError as error:
            flag = "--base_model_name_or_path" if self.single_file else "--pretrained_model_name_or_path"
            raise ConfigError(
                f"{flag} {self.base}: cannot load the {what} ({error}). Pass a Hub id such as {DEFAULT_BASE} (with "
                "network access) or a local directory holding a diffusers LTX-2 pipeline") from None

    def component_config(self, component: str) -> dict[str, Any]:
        if component not in self._configs:
            if component == "text_encoder":
                from transformers import AutoConfig

                data = self._from_base(AutoConfig.from_pretrained, "text encoder config", subfolder=component).to_dict()
                for volatile in ("transformers_version", "torch_dtype", "dtype", "_name_or_path"):
                    data.pop(volatile, None)
            else:
                import diffusers
                from diffusers.pipelines.ltx2 import LTX2TextConnectors

                cls = {"vae": diffusers.AutoencoderKLLTX2Video, "audio_vae": diffusers.AutoencoderKLLTX2Audio,
                       "transformer": diffusers.LTX2VideoTransformer3DModel, "connectors": LTX2TextConnectors}[component]
                data = dict(self._from_base(cls.load_config, f"{component} config", subfolder=component))
            self._configs[component] = data
        return self._configs[component]

    # -- identity ---------------------------------------------------------------------------------

    @property
    def generation(self) -> str:
        """2.0, or 2.3 (prompt modulation of the cross-attention), read from the transformer config."""
        return "2.3" if self.component_config("transformer").get("cross_attn_mod") else "2.0"

    def describe(self) -> str:
        config = self.component_config("transformer")
        layers = int(config.get("num_layers", 48))
        inner = int(config.get("num_attention_heads", 32)) * int(config.get("attention_head_dim", 128))
        size = "19B" if (layers, inner) == (48, 4096) else f"{layers}-layer"
        name = "LTX-2" if self.generation == "2.0" else f"LTX-{self.generation}"
        return f"{name} ({size}{' distilled' if self.distilled else ''})"

    @property
    def distilled(self) -> bool:
        variant = self.config.model.model_variant
        if variant == "auto":
            return "distilled" in self.config.model.pretrained_model_name_or_path.lower()
        return variant == "distilled"

    def fingerprint(self) -> dict[str, Any]:
        return {
            "family": self.name,
            "model_version": self.generation,
            "vae_config": _digest(self.component_config("vae")),
            "audio_vae_config": _digest(self.component_config("audio_vae")),
            "text_encoder_config": _digest({"gemma": self.component_config("text_encoder"),
                                            "connectors": self.component_config("connectors")}),
        }

    def check_training(self) -> None:
        super().check_training()
        if self.single_file:
            self.check_single_file()
        data, frame_rate = self.config.data, self.config.diffusion.frame_rate
        if data.audio != "off" and (data.frame_sampling != "fps" or data.sample_fps != frame_rate):
            raise ConfigError(
                f"--audio {data.audio}: audio stays in sync with the frames only when they are sampled at the frame "
                f"rate the model is told (--frame_rate {frame_rate:g}); add --frame_sampling fps --sample_fps "
                f"{frame_rate:g}, or set --frame_rate to your clips' rate and --sample_fps to the same")

    def check_single_file(self) -> None:
        """A single file must hold the transformer its base's config describes."""
        from safetensors import safe_open

        keys = self.info.single_file_keys if self.info else frozenset()
        marker = next((k for k in SINGLE_FILE_MARKERS if k in keys), SINGLE_FILE_MARKERS[0])
        blocks_prefix = marker.removesuffix("audio_patchify_proj.weight") + "transformer_blocks."
        blocks = {k[len(blocks_prefix):].split(".")[0] for k in keys if k.startswith(blocks_prefix)}
        with safe_open(self.config.model.pretrained_model_name_or_path, framework="pt") as handle:
            width = int(handle.get_slice(marker).get_shape()[0]) if marker in keys else None
        config = self.component_config("transformer")
        want_layers = int(config.get("num_layers", 48))
        want_width = int(config.get("audio_num_attention_heads", 32)) * int(config.get("audio_attention_head_dim", 64))
        if (len(blocks), width) != (want_layers, want_width):
            raise ConfigError(
                f"--pretrained_model_name_or_path {self.config.model.pretrained_model_name_or_path} does not match "
                f"--base_model_name_or_path {self.base}: its transformer has {len(blocks)} layers and an audio stream "
                f"{width} wide, the base's config describes {want_layers} layers {want_width} wide. Pass the "
                f"diffusers folder or Hub id of the same LTX-2 as --base_model_name_or_path (e.g. {DEFAULT_BASE})")

    # -- loading --------------------------------------------------------------------------------------

    def load_transformer(self, dtype: torch.dtype, device: str | torch.device = "cpu") -> nn.Module:
        from diffusers import LTX2VideoTransformer3DModel

        if self.single_file:
            self.check_single_file()
            model = LTX2VideoTransformer3DModel.from_single_file(
                self.config.model.pretrained_model_name_or_path, config=self.base, subfolder="transformer",
                dtype=dtype)
        else:
            model = self._from_base(LTX2VideoTransformer3DModel.from_pretrained, "transformer",
                                    subfolder="transformer", dtype=dtype, use_safetensors=True)
        return model.to(device)

    def load_vae(self, device: torch.device, dtype: torch.dtype | None = None) -> nn.Module:
        from diffusers import AutoencoderKLLTX2Video

        dtype = dtype or auto_dtype(self.config.model.vae_dtype, device, "the VAE")
        vae = self._from_base(AutoencoderKLLTX2Video.from_pretrained, "VAE", subfolder="vae", dtype=dtype,
                              use_safetensors=True)
        if self.config.training.enable_slicing:
            vae.enable_slicing()
        if self.config.training.enable_tiling:
            vae.enable_tiling()
        return vae.to(device).eval().requires_grad_(False)

    def text_pipeline(self, device: torch.device):
        """An ``LTX2Pipeline`` holding only Gemma, its tokenizer and the connectors: the prompt path of inference."""
        from diffusers import LTX2Pipeline
        from diffusers.pipelines.ltx2 import LTX2TextConnectors
        from transformers import AutoTokenizer, Gemma3ForConditionalGeneration

        dtype = auto_dtype(self.config.model.text_encoder_dtype, device, "the text encoder")
        text_encoder = self._from_base(Gemma3ForConditionalGeneration.from_pretrained, "text encoder",
                                       subfolder="text_encoder", torch_dtype=dtype, use_safetensors=True)
        connectors = self._from_base(LTX2TextConnectors.from_pretrained, "text connectors", subfolder="connectors",
                                     dtype=dtype, use_safetensors=True)
        tokenizer = self._from_base(AutoTokenizer.from_pretrained, "tokenizer", subfolder="tokenizer")
        pipe = LTX2Pipeline(scheduler=None, vae=None, audio_vae=None, text_encoder=text_encoder, tokenizer=tokenizer,
                            connectors=connectors, transformer=None, vocoder=None)
        return pipe.to(device)

    def video_encoder(self, device: torch.device) -> VideoEncoder:
        vae = self.load_vae(device)
        return LTXVideoEncoder(vae, next(vae.parameters()).dtype)

    def prompt_encoder(self, device: torch.device) -> PromptEncoder:
        pipe = self.text_pipeline(device)
        for module in (pipe.text_encoder, pipe.connectors):
            module.eval().requires_grad_(False)
        return GemmaPromptEncoder(pipe)

    def audio_sample_rate(self) -> int:
        return int(self.component_config("audio_vae")["sample_rate"])

    def audio_encoder(self, device: torch.device) -> AudioEncoder:
        from diffusers import AutoencoderKLLTX2Audio

        dtype = auto_dtype(self.config.model.vae_dtype, device, "the audio VAE")
        vae = self._from_base(AutoencoderKLLTX2Audio.from_pretrained, "audio VAE", subfolder="audio_vae",
                              dtype=dtype, use_safetensors=True)
        return LTX2AudioEncoder(vae.to(device).eval().requires_grad_(False))

    def transformer_blocks(self, transformer: nn.Module) -> Sequence[nn.Module]:
        return transformer.transformer_blocks

    def frozen_modules(self) -> str | None:
        return AUDIO_BRANCH if self.config.data.audio == "off" else None

    # -- the transformer call -------------------------------------------------------------------

    def _context_widths(self) -> tuple[int, int]:
        """Widths of the video and audio contexts: the caption projections' input (LTX-2.0), or the cross-attention
        widths when the connectors project per modality (LTX-2.3)."""
        config = self.component_config("transformer")
        if config.get("use_prompt_embeddings", True):
            return int(config.get("caption_channels", 3840)), int(config.get("caption_channels", 3840))
        return int(config["cross_attention_dim"]), int(config["audio_cross_attention_dim"])

    def joint_latents(self, batch: Batch, spec: LatentSpec, frame_rate: float) -> dict[str, JointLatents]:
        if AUDIO in batch.extras:
            return {AUDIO: JointLatents(batch.extras[AUDIO].float(), batch.extras[AUDIO_PRESENT].bool())}
        b, _, f = batch.latents.shape[:3]
        frames = (f - 1) * spec.temporal_compression + 1
        length = audio_latent_frames(frames, frame_rate, self.component_config("audio_vae"))
        width = int(self.component_config("transformer").get("audio_in_channels", 128))
        device = batch.latents.device
        return {AUDIO: JointLatents(torch.zeros(b, length, width, device=device),
                                    torch.zeros(b, dtype=torch.bool, device=device))}

    def predict(self, transformer: nn.Module, noisy: torch.Tensor, sigmas: torch.Tensor, batch: Batch,
                spec: LatentSpec, frame_rate: float) -> torch.Tensor:
        return self.predict_joint(transformer, noisy, sigmas, batch, spec, frame_rate)[0]

    def predict_joint(self, transformer: nn.Module, noisy: torch.Tensor, sigmas: torch.Tensor, batch: Batch,
                      spec: LatentSpec, frame_rate: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Video and audio velocities; the audio stream's noisy latents (B, L, C * mel bins) are ``batch.extras``'."""
        _, _, f, h, w = noisy.shape
        p, pt = spec.patch_size, spec.patch_size_t
        if sigmas.ndim == 2:  # per latent frame -> per token; the audio and modulations take the noisy frames' value
            video_timestep = (sigmas * 1000.0).repeat_interleave((h // p) * (w // p), dim=1)
            timestep = sigmas.amax(dim=1) * 1000.0
        else:
            video_timestep = timestep = sigmas * 1000.0
        audio = batch.extras[AUDIO].to(noisy.dtype)
        video_context, audio_context = batch.prompt_embeds.split(self._context_widths(), dim=-1)
        video, audio_velocity = transformer(
            hidden_states=pack_latents(noisy, p, pt),
            audio_hidden_states=audio,
            encoder_hidden_states=video_context,
            audio_encoder_hidden_states=audio_context,
            timestep=video_timestep,
            audio_timestep=timestep,
            sigma=timestep,
            encoder_attention_mask=batch.prompt_attention_mask,
            audio_encoder_attention_mask=batch.prompt_attention_mask,
            num_frames=f // pt,
            height=h // p,
            width=w // p,
            fps=frame_rate,
            audio_num_frames=audio.shape[1],
            use_cross_timestep=True,
            return_dict=False,
        )
        return unpack_latents(video, noisy.shape, p, pt), {AUDIO: audio_velocity}

    # -- LoRA and export --------------------------------------------------------------------------

    def save_lora(self, directory: Path, layers: dict[str, torch.Tensor], adapter_metadata: dict[str, Any]) -> Path:
        from diffusers import LTX2Pipeline

        LTX2Pipeline.save_lora_weights(str(directory), transformer_lora_layers=layers,
                                       transformer_lora_adapter_metadata=adapter_metadata, safe_serialization=True)
        return Path(directory) / DIFFUSERS_WEIGHTS

    # -- inference ------------------------------------------------------------------------------

    def pipeline(self, device: torch.device, dtype: torch.dtype, transformer: nn.Module | None = None,
                 image_to_video: bool = False):
        from diffusers import LTX2ImageToVideoPipeline, LTX2Pipeline

        cls = LTX2ImageToVideoPipeline if image_to_video else LTX2Pipeline
        if transformer is None and self.single_file:
            transformer = self.load_transformer(dtype, device)
        given = {} if transformer is None else {"transformer": transformer}
        # The video VAE in fp32 on the CPU, where bf16 3D convolutions are ~100x slower (the pipeline casts to it).
        vae = self.load_vae(device, dtype if device.type == "cuda" else None)
        pipe = self._from_base(cls.from_pretrained, "pipeline", dtype=dtype, use_safetensors=True, vae=vae,
                               **given)
        return pipe.to(device)

    def pipeline_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"frame_rate": self.config.diffusion.frame_rate,
                                  "max_sequence_length": self.max_sequence_length()}
        if self.distilled:  # no guidance of any kind, as Lightricks runs the distilled model
            kwargs.update(stg_scale=0.0, audio_stg_scale=0.0, modality_scale=1.0, audio_modality_scale=1.0,
                          audio_guidance_scale=1.0, guidance_rescale=0.0, audio_guidance_rescale=0.0)
        if self.component_config("vae").get("timestep_conditioning"):
            v = self.config.validation
            kwargs.update(decode_timestep=0.05 if v.decode_timestep is None else v.decode_timestep,
                          decode_noise_scale=0.025 if v.decode_noise_scale is None else v.decode_noise_scale)
        return kwargs

    def inference_defaults(self) -> dict[str, Any]:
        return dict(DISTILLED_INFERENCE if self.distilled else DEV_INFERENCE)
