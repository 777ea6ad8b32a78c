"""The model-family seam: everything model-specific behind one small interface, and the registry that picks it.

A family (LTX-Video 0.9.x, next LTX-2) is one module implementing :class:`ModelFamily`: how to load each
component (a diffusers folder, a Hub id or a single-file checkpoint), the latent spec (normalisation, packing,
compression factors and so the bucket constraints), prompt encoding, the transformer call, LoRA targets and
export, and the diffusers pipelines that validation and ``generate`` run. Data, cache, training loop,
validation, generate and tune call only this interface; flow matching itself is generic (:mod:`.flow`).

Adding a family: one module with a ``ModelFamily`` subclass decorated with :func:`register` and imported in
:func:`_load_builtin_families`, plus its tiny test configuration in :mod:`ray_ltx.model.tiny`.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from ray_ltx.errors import ConfigError
from ray_ltx.model.lora import DIFFUSERS_WEIGHTS

if TYPE_CHECKING:
    from ray_ltx.config import Config

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def torch_dtype(name: str) -> torch.dtype:
    return DTYPES[name]


@dataclass(frozen=True)
class LatentSpec:
    """What the trainer needs to know of the VAE, without loading it (kept in the cache manifest)."""

    latent_channels: int
    spatial_compression: int
    temporal_compression: int
    scaling_factor: float
    latents_mean: tuple[float, ...]
    latents_std: tuple[float, ...]
    patch_size: int = 1
    patch_size_t: int = 1

    @classmethod
    def from_dict(cls, data: dict) -> LatentSpec:
        data = dict(data)
        data["latents_mean"] = tuple(data["latents_mean"])
        data["latents_std"] = tuple(data["latents_std"])
        return cls(**data)

    def to_dict(self) -> dict:
        return asdict(self)

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """(C, F, H, W) of the latents of a clip of frames x height x width pixels."""
        return (
            self.latent_channels,
            (frames - 1) // self.temporal_compression + 1,
            height // self.spatial_compression,
            width // self.spatial_compression,
        )

    def normalize(self, latents: torch.Tensor) -> torch.Tensor:
        """Raw VAE latents (B, C, F, H, W) -> the distribution the transformer is trained on."""
        mean = torch.tensor(self.latents_mean, device=latents.device, dtype=latents.dtype).view(1, -1, 1, 1, 1)
        std = torch.tensor(self.latents_std, device=latents.device, dtype=latents.dtype).view(1, -1, 1, 1, 1)
        return (latents - mean) * self.scaling_factor / std


@dataclass
class Batch:
    """One bucket-homogeneous micro-batch read from the latent cache."""

    latents: torch.Tensor  # (B, C, F, H, W) raw VAE latents
    prompt_embeds: torch.Tensor  # (B, L, D)
    prompt_attention_mask: torch.Tensor  # (B, L) bool
    extras: dict[str, torch.Tensor] = field(default_factory=dict)  # family-specific conditioning

    def to(self, device: torch.device, dtype: torch.dtype) -> Batch:
        return Batch(
            self.latents.to(device, non_blocking=True),
            self.prompt_embeds.to(device, dtype, non_blocking=True),
            self.prompt_attention_mask.to(device, non_blocking=True),
            {k: v.to(device, non_blocking=True) for k, v in self.extras.items()},
        )

    @property
    def num_tokens(self) -> int:
        b, _, f, h, w = self.latents.shape
        return b * f * h * w


@dataclass
class EncodedPrompts:
    embeds: torch.Tensor  # (B, L, D)
    mask: torch.Tensor  # (B, L) bool
    truncated: list[bool]


@dataclass(frozen=True)
class CheckpointInfo:
    """What could be read of a checkpoint without loading weights: the registry decides the family from it."""

    source: str
    kind: str  # "folder", "hub" or "single_file"
    model_index: dict[str, Any] | None = None
    transformer_config: dict[str, Any] | None = None
    single_file_keys: frozenset[str] = frozenset()

    def describe(self) -> str:
        found = []
        if self.model_index is not None:
            found.append(f"model_index.json of a {self.model_index.get('_class_name', '?')}")
        if self.transformer_config is not None:
            found.append(f"a transformer config of a {self.transformer_config.get('_class_name', '?')}")
        if self.single_file_keys:
            sample = ", ".join(sorted(self.single_file_keys)[:3])
            found.append(f"a single-file checkpoint of {len(self.single_file_keys)} tensors (e.g. {sample})")
        return "; ".join(found) or "nothing readable (no model_index.json, no transformer/config.json)"


@dataclass
class JointLatents:
    """A latent stream denoised jointly with the video (LTX-2's audio): clean, normalised latents (B, ...) and which
    samples have them (B,) bool; a sample without is fed pure noise and left out of the stream's loss."""

    latents: torch.Tensor
    present: torch.Tensor


class PromptEncoder(ABC):
    """Captions -> prompt embeddings exactly as the family's pipeline encodes a prompt."""

    @abstractmethod
    def encode(self, prompts: Sequence[str], max_length: int) -> EncodedPrompts: ...


class VideoEncoder(ABC):
    """Decoded clips -> raw VAE latents."""

    latent_spec: LatentSpec

    @abstractmethod
    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, F, H, W, 3) uint8 on the encoder's device -> (B, C, F', H', W') latents."""


class AudioEncoder(ABC):
    """Decoded audio -> the family's per-sample extras (e.g. LTX-2's audio latents), cached with the clip."""

    @abstractmethod
    def encode(self, waveform: torch.Tensor | None, num_frames: int, frame_rate: float) -> dict[str, torch.Tensor]:
        """(channels, samples) float at the family's sample rate, spanning ``num_frames`` frames at ``frame_rate``,
        or None for a clip without audio -> tensors stored in the cache's ``extras``."""


class ModelFamily(ABC):
    """One model family, bound to a run's configuration."""

    name: ClassVar[str]
    title: ClassVar[str]
    #: Bucket constraints: frames k * frame_multiple + 1, sides multiples of side_multiple.
    frame_multiple: ClassVar[int] = 8
    side_multiple: ClassVar[int] = 32
    supports_first_frame_conditioning: ClassVar[bool] = False
    #: Whether clips' audio tracks can be trained (``--audio on|required``).
    supports_audio: ClassVar[bool] = False
    #: Text tokens a prompt is padded to when ``--max_sequence_length`` is not given: the family's pipeline default.
    default_max_sequence_length: ClassVar[int] = 128
    default_target_modules: ClassVar[tuple[str, ...]] = ()
    #: Prefix of the ComfyUI LoRA keys (``<prefix><module>.lora_A.weight``).
    comfyui_prefix: ClassVar[str] = "diffusion_model."
    #: Hub repos of this family, recognised by name without a download (lower case prefixes).
    hub_prefixes: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: Config, info: CheckpointInfo | None = None):
        self.config = config
        self.info = info

    @classmethod
    @abstractmethod
    def recognizes(cls, info: CheckpointInfo) -> bool:
        """True if ``info`` is a checkpoint of this family."""

    # -- identity: what a latent cache and a checkpoint depend on ---------------------------------

    @abstractmethod
    def describe(self) -> str:
        """Human name of the checkpoint being trained, e.g. 'LTX-Video 0.9.5+ (2B)'."""

    @abstractmethod
    def fingerprint(self) -> dict[str, Any]:
        """Facts a latent cache depends on (version, component config hashes): a cache is reused only if equal."""

    # -- loading --------------------------------------------------------------------------------------

    @abstractmethod
    def load_transformer(self, dtype: torch.dtype, device: str | torch.device = "cpu") -> nn.Module: ...

    @abstractmethod
    def video_encoder(self, device: torch.device) -> VideoEncoder: ...

    @abstractmethod
    def prompt_encoder(self, device: torch.device) -> PromptEncoder: ...

    @abstractmethod
    def transformer_blocks(self, transformer: nn.Module) -> Sequence[nn.Module]:
        """The repeated blocks: the unit of compilation, sharding and activation checkpointing."""

    def prepare_for_training(self, transformer: nn.Module) -> None:  # noqa: B027 - an optional hook
        """Adapt the loaded transformer before it is wrapped (DDP, ZeRO, FSDP) and compiled; default: nothing."""

    def check_training(self) -> None:
        """Refuse, before any work, settings this family cannot honour (raise ConfigError)."""
        if self.config.training.first_frame_conditioning_p > 0 and not self.supports_first_frame_conditioning:
            raise ConfigError(f"--first_frame_conditioning_p: {self.describe()} has no image-to-video conditioning; "
                              "set it to 0")
        if self.config.data.audio != "off" and not self.supports_audio:
            raise ConfigError(f"--audio {self.config.data.audio}: {self.describe()} generates no audio; set --audio off "
                              "(or train an audio-video model such as LTX-2)")

    def max_sequence_length(self) -> int:
        """Text tokens per prompt: ``--max_sequence_length``, else the family's pipeline default."""
        return self.config.data.max_sequence_length or self.default_max_sequence_length

    def audio_sample_rate(self) -> int | None:
        """Sample rate clips' audio is resampled to for :meth:`audio_encoder`; None for a family without audio."""
        return None

    def audio_encoder(self, device: torch.device) -> AudioEncoder:
        raise ConfigError(f"--audio {self.config.data.audio}: {self.describe()} has no audio encoder")

    def frozen_modules(self) -> str | None:
        """A regex of transformer module (and parameter) names that stay frozen whatever is trained (LoRA targets skip
        them, full finetuning leaves them without gradients), e.g. LTX-2's audio branch when only video is trained;
        None: nothing is held back."""
        return None

    # -- the transformer call -------------------------------------------------------------------

    @abstractmethod
    def predict(self, transformer: nn.Module, noisy: torch.Tensor, sigmas: torch.Tensor, batch: Batch,
                spec: LatentSpec, frame_rate: float) -> torch.Tensor:
        """The velocity prediction for ``noisy`` (B, C, F, H, W) at ``sigmas`` (B,) or per latent frame (B, F);
        returned in the same (B, C, F, H, W) layout."""

    def joint_latents(self, batch: Batch, spec: LatentSpec, frame_rate: float) -> dict[str, JointLatents]:
        """Latent streams denoised together with the video, by name (LTX-2's audio); none by default. Flow matching
        noises each at the sample's sigma and hands the noisy stream to :meth:`predict_joint` in ``batch.extras``
        under the same name."""
        return {}

    def predict_joint(self, transformer: nn.Module, noisy: torch.Tensor, sigmas: torch.Tensor, batch: Batch,
                      spec: LatentSpec, frame_rate: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """:meth:`predict`, plus the velocity of each joint stream (same shapes as their latents)."""
        return self.predict(transformer, noisy, sigmas, batch, spec, frame_rate), {}

    def sequence_length(self, latent_shape: Sequence[int], spec: LatentSpec) -> int:
        """Transformer tokens of one sample of latents (C, F, H, W)."""
        _, f, h, w = latent_shape[-4:]
        return (f // spec.patch_size_t) * (h // spec.patch_size) * (w // spec.patch_size)

    # -- LoRA and export --------------------------------------------------------------------------

    @abstractmethod
    def save_lora(self, directory: Path, layers: dict[str, torch.Tensor], adapter_metadata: dict[str, Any]) -> Path:
        """Write ``pytorch_lora_weights.safetensors`` as the family's pipeline ``save_lora_weights`` does."""

    def check_lora(self, lora: str, pipe: Any) -> None:
        """Refuse a LoRA made for another model before ``pipe`` (this family's pipeline) loads it: one ray-ltx says
        was trained for another family, or one whose layers are not the pipeline transformer's."""
        from safetensors import safe_open

        path = Path(lora)
        weights = path / DIFFUSERS_WEIGHTS if path.is_dir() else path
        with safe_open(str(weights), framework="pt") as handle:
            metadata = handle.metadata() or {}
        trained_for = metadata.get(LORA_FAMILY_KEY)
        if trained_for and trained_for != self.name:
            problem = f"it was trained for {metadata.get(LORA_MODEL_KEY, trained_for)}"
        else:
            problem = _lora_misfit(pipe.lora_state_dict(str(path)), pipe.transformer)
        if problem:
            raise ConfigError(f"--lora {lora}: does not fit {self.describe()}: {problem}. Pass a LoRA trained for this "
                              "model, or the --model it was trained for")

    # -- inference ------------------------------------------------------------------------------

    @abstractmethod
    def pipeline(self, device: torch.device, dtype: torch.dtype, transformer: nn.Module | None = None,
                 image_to_video: bool = False):
        """The diffusers pipeline for validation (``transformer`` = the live training module) or generate."""

    def pipeline_kwargs(self) -> dict[str, Any]:
        """Call arguments the family's pipeline needs beyond prompt, size, steps and guidance."""
        return {}

    def inference_defaults(self) -> dict[str, Any]:
        """Recommended steps and guidance for this checkpoint (e.g. a distilled one needs few steps, no CFG)."""
        return {"num_inference_steps": 30, "guidance_scale": 3.0}


#: safetensors metadata ray-ltx adds to the LoRAs it writes: the family and the model they were trained for.
LORA_FAMILY_KEY = "ray_ltx.model_family"
LORA_MODEL_KEY = "ray_ltx.model"


def _lora_misfit(state: dict[str, torch.Tensor], transformer: nn.Module) -> str | None:
    """The first LoRA layer (diffusers names) that ``transformer`` has not, or not in that shape."""
    for key, tensor in sorted(state.items()):
        module_name, _, kind = key.removeprefix("transformer.").rpartition(".lora_")
        if not key.startswith("transformer.") or not kind.startswith(("A.", "B.")):
            continue
        try:
            module = transformer.get_submodule(module_name)
        except AttributeError:
            return f"the transformer has no layer {module_name}"
        want = getattr(module, "in_features", None) if kind.startswith("A.") else getattr(module, "out_features", None)
        have = tensor.shape[1] if kind.startswith("A.") else tensor.shape[0]
        if want != have:
            side = "input" if kind.startswith("A.") else "output"
            return f"layer {module_name} has {want} {side} features, the LoRA {have}"
    return None


FAMILIES: dict[str, type[ModelFamily]] = {}


def register(family: type[ModelFamily]) -> type[ModelFamily]:
    FAMILIES[family.name] = family
    return family


def _load_builtin_families() -> None:
    from ray_ltx.model import ltx2, ltx_video  # noqa: F401 - register themselves


def read_checkpoint_info(config: Config) -> CheckpointInfo:
    """model_index.json and the transformer config of a folder or Hub id, or the key names of a single file."""
    source = config.model.pretrained_model_name_or_path
    if source.endswith(".safetensors"):
        path = Path(source).expanduser()
        if not path.is_file():
            raise ConfigError(f"--pretrained_model_name_or_path {source}: no such single-file checkpoint")
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as handle:
                keys = frozenset(handle.keys())
        except Exception as error:  # a truncated or foreign file: say which and why
            raise ConfigError(f"--pretrained_model_name_or_path {source}: not a readable safetensors file "
                              f"({error})") from None
        return CheckpointInfo(source, "single_file", single_file_keys=keys)
    if Path(source).expanduser().is_dir():
        root = Path(source).expanduser()
        return CheckpointInfo(source, "folder", _read_json(root / "model_index.json"),
                              _read_json(root / "transformer" / "config.json"))
    _load_builtin_families()
    if any(source.lower().startswith(p) for f in FAMILIES.values() for p in f.hub_prefixes):
        return CheckpointInfo(source, "hub")  # a known repo: no need to reach the Hub to tell its family
    return CheckpointInfo(source, "hub", _hub_json(config, "model_index.json"),
                          _hub_json(config, "transformer/config.json"))


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _hub_json(config: Config, filename: str) -> dict[str, Any] | None:
    try:
        from huggingface_hub import hf_hub_download

        path = hf_hub_download(config.model.pretrained_model_name_or_path, filename, revision=config.model.revision)
    except Exception:  # offline, gated, or not there: detection falls back to --model_name
        return None
    return _read_json(Path(path))


def family_for(config: Config) -> ModelFamily:
    """The family of the checkpoint ``config`` trains: ``--model_name`` if given, else detected."""
    _load_builtin_families()
    name = config.model.model_name
    if name != "auto":
        if name not in FAMILIES:
            raise ConfigError(f"--model_name {name}: unknown model family; known: {', '.join(sorted(FAMILIES))}")
        family = FAMILIES[name]
        info = None
        try:
            info = read_checkpoint_info(config)
        except ConfigError:
            if config.model.pretrained_model_name_or_path.endswith(".safetensors"):
                raise
        return family(config, info)
    info = read_checkpoint_info(config)
    for family in FAMILIES.values():
        if family.recognizes(info):
            return family(config, info)
    known = "; ".join(f"{f.name} ({f.title})" for f in FAMILIES.values())
    raise ConfigError(
        f"--pretrained_model_name_or_path {info.source}: not a checkpoint of a model family ray-ltx trains. "
        f"Found {info.describe()}. Known families: {known}. Point at a diffusers pipeline folder, a Hub id or a "
        "single-file .safetensors of one of them, or pass --model_name when the checkpoint cannot be read here "
        "(e.g. a Hub id without network)"
    )
