"""The LTX-Video training recipe in one place: latents, packing, rope scale, flow matching.

Everything here follows diffusers' ``LTXPipeline`` so that a model trained with ray-ltx sees at
training time exactly what it sees at inference: latents normalised with the VAE's channel
mean/std and scaling factor, packed into the transformer's token layout, rope interpolation
scale from the VAE compression and frame rate, and timesteps of ``sigma * 1000``.
The training loop only calls :func:`flow_matching_loss` and :func:`heldout_loss`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from ray_ltx.config import DiffusionConfig


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
    def from_vae(cls, vae: nn.Module) -> LatentSpec:
        return cls(
            latent_channels=int(vae.config.latent_channels),
            spatial_compression=int(vae.spatial_compression_ratio),
            temporal_compression=int(vae.temporal_compression_ratio),
            scaling_factor=float(vae.config.scaling_factor),
            latents_mean=tuple(float(x) for x in vae.latents_mean.flatten()),
            latents_std=tuple(float(x) for x in vae.latents_std.flatten()),
        )

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


def normalize_latents(latents: torch.Tensor, spec: LatentSpec) -> torch.Tensor:
    """Raw VAE latents (B, C, F, H, W) -> the distribution the transformer is trained on."""
    mean = torch.tensor(spec.latents_mean, device=latents.device, dtype=latents.dtype).view(1, -1, 1, 1, 1)
    std = torch.tensor(spec.latents_std, device=latents.device, dtype=latents.dtype).view(1, -1, 1, 1, 1)
    return (latents - mean) * spec.scaling_factor / std


def pack_latents(latents: torch.Tensor, patch_size: int = 1, patch_size_t: int = 1) -> torch.Tensor:
    """(B, C, F, H, W) -> (B, tokens, C * p_t * p * p), the transformer's token layout."""
    b, c, f, h, w = latents.shape
    latents = latents.reshape(b, c, f // patch_size_t, patch_size_t, h // patch_size, patch_size,
                              w // patch_size, patch_size)
    return latents.permute(0, 2, 4, 6, 1, 3, 5, 7).flatten(4, 7).flatten(1, 3)


def rope_interpolation_scale(spec: LatentSpec, frame_rate: float) -> tuple[float, float, float]:
    return (spec.temporal_compression / frame_rate, float(spec.spatial_compression), float(spec.spatial_compression))


def shift_sigmas(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def sample_sigmas(
    diffusion: DiffusionConfig, batch_size: int, generator: torch.Generator, device: torch.device
) -> torch.Tensor:
    """Per-sample sigmas in (0, 1), drawn as the weighting scheme prescribes, then shifted."""
    scheme = diffusion.flow_weighting_scheme
    if scheme == "logit_normal":
        u = torch.randn(batch_size, generator=generator, device=device) * diffusion.flow_logit_std
        u = torch.sigmoid(u + diffusion.flow_logit_mean)
    elif scheme == "mode":
        u = torch.rand(batch_size, generator=generator, device=device)
        u = 1 - u - diffusion.flow_mode_scale * (torch.cos(math.pi * u / 2) ** 2 - 1 + u)
    else:
        u = torch.rand(batch_size, generator=generator, device=device)
    # sigma = 0 is a clean sample (nothing to learn) and sigma_sqrt's weight 1/sigma^2 would explode.
    sigmas = u.clamp(1e-3, 1.0)
    return shift_sigmas(sigmas, diffusion.flow_shift)


def loss_weights(scheme: str, sigmas: torch.Tensor) -> torch.Tensor:
    """Per-sample loss weights of the SD3 flow-matching schemes."""
    if scheme == "sigma_sqrt":
        return sigmas.float() ** -2.0
    if scheme == "cosmap":
        return 2 / (math.pi * (1 - 2 * sigmas.float() + 2 * sigmas.float() ** 2))
    return torch.ones_like(sigmas, dtype=torch.float32)


@dataclass
class Batch:
    """One bucket-homogeneous micro-batch read from the latent cache."""

    latents: torch.Tensor  # (B, C, F, H, W) raw VAE latents
    prompt_embeds: torch.Tensor  # (B, L, D)
    prompt_attention_mask: torch.Tensor  # (B, L) bool

    def to(self, device: torch.device, dtype: torch.dtype) -> Batch:
        return Batch(
            self.latents.to(device, non_blocking=True),
            self.prompt_embeds.to(device, dtype, non_blocking=True),
            self.prompt_attention_mask.to(device, non_blocking=True),
        )

    @property
    def num_tokens(self) -> int:
        b, _, f, h, w = self.latents.shape
        return b * f * h * w


def drop_captions(batch: Batch, empty_embeds: torch.Tensor, empty_mask: torch.Tensor, p: float,
                  generator: torch.Generator) -> Batch:
    """Replace each sample's prompt with the empty prompt with probability ``p`` (caption dropout)."""
    if p <= 0:
        return batch
    b = batch.prompt_embeds.shape[0]
    drop = torch.rand(b, generator=generator, device=generator.device) < p
    drop = drop.to(batch.prompt_embeds.device)
    embeds = torch.where(drop.view(b, 1, 1), empty_embeds.to(batch.prompt_embeds), batch.prompt_embeds)
    mask = torch.where(drop.view(b, 1), empty_mask.to(batch.prompt_attention_mask), batch.prompt_attention_mask)
    return Batch(batch.latents, embeds, mask)


def _predict(transformer: nn.Module, noisy: torch.Tensor, sigmas: torch.Tensor, batch: Batch,
             spec: LatentSpec, frame_rate: float) -> torch.Tensor:
    _, _, f, h, w = noisy.shape
    return transformer(
        hidden_states=pack_latents(noisy, spec.patch_size, spec.patch_size_t),
        encoder_hidden_states=batch.prompt_embeds,
        timestep=sigmas * 1000.0,
        encoder_attention_mask=batch.prompt_attention_mask,
        num_frames=f // spec.patch_size_t,
        height=h // spec.patch_size,
        width=w // spec.patch_size,
        rope_interpolation_scale=rope_interpolation_scale(spec, frame_rate),
        return_dict=False,
    )[0]


def flow_matching_loss(
    transformer: nn.Module,
    batch: Batch,
    spec: LatentSpec,
    diffusion: DiffusionConfig,
    generator: torch.Generator,
    compute_dtype: torch.dtype,
) -> torch.Tensor:
    """The weighted flow-matching loss of one micro-batch.

    noisy = (1 - sigma) * latents + sigma * noise, and the transformer predicts the velocity
    noise - latents.
    """
    latents = normalize_latents(batch.latents.float(), spec)
    sigmas = sample_sigmas(diffusion, latents.shape[0], generator, latents.device)
    noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
    s = sigmas.view(-1, 1, 1, 1, 1)
    noisy = ((1 - s) * latents + s * noise).to(compute_dtype)
    target = pack_latents(noise - latents, spec.patch_size, spec.patch_size_t)
    pred = _predict(transformer, noisy, sigmas.to(compute_dtype), batch, spec, diffusion.frame_rate)
    weights = loss_weights(diffusion.flow_weighting_scheme, sigmas).view(-1, 1, 1)
    return (weights * (pred.float() - target) ** 2).mean()


#: Fixed noise levels of the held-out loss: spread over the range, comparable across runs.
HELDOUT_SIGMAS = (0.1, 0.3, 0.5, 0.7, 0.9)


@torch.no_grad()
def heldout_loss(transformer: nn.Module, batch: Batch, spec: LatentSpec, frame_rate: float, seed: int,
                 compute_dtype: torch.dtype) -> float:
    """Unweighted flow-matching loss at fixed sigmas and fixed noise: deterministic for given weights."""
    latents = normalize_latents(batch.latents.float(), spec)
    generator = torch.Generator(device=latents.device).manual_seed(seed)
    total = 0.0
    for sigma in HELDOUT_SIGMAS:
        noise = torch.randn(latents.shape, generator=generator, device=latents.device)
        sigmas = torch.full((latents.shape[0],), sigma, device=latents.device)
        noisy = ((1 - sigma) * latents + sigma * noise).to(compute_dtype)
        target = pack_latents(noise - latents, spec.patch_size, spec.patch_size_t)
        pred = _predict(transformer, noisy, sigmas.to(compute_dtype), batch, spec, frame_rate)
        total += float(((pred.float() - target) ** 2).mean())
    return total / len(HELDOUT_SIGMAS)
