"""Flow matching, the same for every model family: sigma sampling, loss weighting, the loss.

noisy = (1 - sigma) * latents + sigma * noise, and the transformer predicts the velocity noise - latents; a family's
joint streams (LTX-2's audio) are noised at the same sigma and their loss is added.
Sigma schemes are small registered functions (the SD3 schemes through diffusers' own helpers, and
LTX-Video-Trainer's ``shifted_logit_normal`` whose shift grows with the sequence length). With first-frame
conditioning a sample's first latent frame stays clean: its sigma is 0, it is left out of the loss, and the
family hands the per-frame sigmas to the transformer as per-token timesteps (what image-to-video inference does).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ray_ltx.config import DiffusionConfig
from ray_ltx.model.family import Batch, LatentSpec, ModelFamily

SigmaSampler = Callable[[DiffusionConfig, int, int, torch.Generator, torch.device], torch.Tensor]
SIGMA_SAMPLERS: dict[str, SigmaSampler] = {}


def sigma_sampler(*names: str) -> Callable[[SigmaSampler], SigmaSampler]:
    def register(fn: SigmaSampler) -> SigmaSampler:
        for name in names:
            SIGMA_SAMPLERS[name] = fn
        return fn

    return register


@sigma_sampler("none", "sigma_sqrt", "cosmap", "logit_normal", "mode")
def _sd3_density(diffusion: DiffusionConfig, batch_size: int, seq_len: int, generator: torch.Generator,
                 device: torch.device) -> torch.Tensor:  # noqa: ARG001 - the SD3 schemes ignore the length
    from diffusers.training_utils import compute_density_for_timestep_sampling

    return compute_density_for_timestep_sampling(
        diffusion.flow_weighting_scheme, batch_size, logit_mean=diffusion.flow_logit_mean,
        logit_std=diffusion.flow_logit_std, mode_scale=diffusion.flow_mode_scale, device=device, generator=generator)


#: LTX-Video-Trainer's shift: linear in the token count, 0.95 at 1024 tokens to 2.05 at 4096 (the scheduler's
#: base_shift/max_shift), so longer clips train at more noise.
SHIFT_TOKENS = (1024, 4096)
SHIFT_RANGE = (0.95, 2.05)


def sequence_shift(seq_len: int) -> float:
    (t0, t1), (s0, s1) = SHIFT_TOKENS, SHIFT_RANGE
    return s0 + (s1 - s0) * (seq_len - t0) / (t1 - t0)


@sigma_sampler("shifted_logit_normal")
def _shifted_logit_normal(diffusion: DiffusionConfig, batch_size: int, seq_len: int, generator: torch.Generator,
                          device: torch.device) -> torch.Tensor:
    normal = torch.randn(batch_size, generator=generator, device=device) * diffusion.flow_logit_std
    return torch.sigmoid(normal + sequence_shift(seq_len))


def shift_sigmas(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def sample_sigmas(diffusion: DiffusionConfig, batch_size: int, generator: torch.Generator, device: torch.device,
                  seq_len: int = 0) -> torch.Tensor:
    """Per-sample sigmas in (0, 1], drawn as the weighting scheme prescribes, then shifted."""
    u = SIGMA_SAMPLERS[diffusion.flow_weighting_scheme](diffusion, batch_size, seq_len, generator, device)
    # sigma = 0 is a clean sample (nothing to learn) and sigma_sqrt's weight 1/sigma^2 would explode.
    return shift_sigmas(u.clamp(1e-3, 1.0), diffusion.flow_shift)


def loss_weights(scheme: str, sigmas: torch.Tensor) -> torch.Tensor:
    """Per-sample loss weights of the SD3 flow-matching schemes (1 for the others)."""
    from diffusers.training_utils import compute_loss_weighting_for_sd3

    return compute_loss_weighting_for_sd3(scheme, sigmas.float()).float()


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
    return Batch(batch.latents, embeds, mask, batch.extras)


def _predict_with_streams(family: ModelFamily, transformer: nn.Module, noisy: torch.Tensor, model_sigmas: torch.Tensor,
                          batch: Batch, spec: LatentSpec, frame_rate: float, sigmas: torch.Tensor,
                          generator: torch.Generator, compute_dtype: torch.dtype, weights: torch.Tensor,
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """The video velocity, and the loss of the family's joint streams: each noised at its sample's sigma (pure noise
    for a sample without it) and averaged over the samples that have it. A stream no sample has still adds 0 made
    from its prediction, so every parameter that made it takes part in the backward pass (DDP expects that)."""
    noisy_streams, targets = {}, {}
    for name, stream in family.joint_latents(batch, spec, frame_rate).items():
        noise = torch.randn(stream.latents.shape, generator=generator, device=stream.latents.device)
        s = sigmas.view(-1, *([1] * (noise.ndim - 1))).to(noise)
        present = stream.present.view(s.shape)
        noisy_streams[name] = torch.where(present, (1 - s) * stream.latents + s * noise, noise).to(compute_dtype)
        targets[name] = (noise - stream.latents, present.float())
    batch = Batch(batch.latents, batch.prompt_embeds, batch.prompt_attention_mask, {**batch.extras, **noisy_streams})
    pred, stream_preds = family.predict_joint(transformer, noisy, model_sigmas, batch, spec, frame_rate)
    loss = torch.zeros((), device=noisy.device)
    for name, (target, counted) in targets.items():
        squared = weights.view(counted.shape) * counted * (stream_preds[name].float() - target) ** 2
        loss = loss + squared.sum() / counted.expand_as(squared).sum().clamp_min(1.0)
    return pred, loss


def flow_matching_loss(
    family: ModelFamily,
    transformer: nn.Module,
    batch: Batch,
    spec: LatentSpec,
    diffusion: DiffusionConfig,
    generator: torch.Generator,
    compute_dtype: torch.dtype,
    first_frame_p: float = 0.0,
) -> torch.Tensor:
    """The weighted flow-matching loss of one micro-batch: the video's, plus each joint stream's (LTX-2's audio).

    With ``first_frame_p`` > 0 each sample's first latent frame stays clean with that probability (sigma 0,
    excluded from the loss), so the model learns to continue a given first frame.
    """
    latents = spec.normalize(batch.latents.float())
    b, _, f, _, _ = latents.shape
    seq_len = family.sequence_length(latents.shape, spec)
    sigmas = sample_sigmas(diffusion, b, generator, latents.device, seq_len)
    noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
    target = noise - latents
    weights = loss_weights(diffusion.flow_weighting_scheme, sigmas).view(-1, 1, 1, 1, 1)
    if first_frame_p <= 0:
        s = sigmas.view(-1, 1, 1, 1, 1)
        noisy = ((1 - s) * latents + s * noise).to(compute_dtype)
        pred, streams = _predict_with_streams(family, transformer, noisy, sigmas.to(compute_dtype), batch, spec,
                                              diffusion.frame_rate, sigmas, generator, compute_dtype, weights)
        return (weights * (pred.float() - target) ** 2).mean() + streams
    conditioned = torch.rand(b, generator=generator, device=generator.device).to(latents.device) < first_frame_p
    frame_sigmas = sigmas.view(b, 1).repeat(1, f)
    frame_sigmas[:, 0] = torch.where(conditioned, torch.zeros_like(sigmas), sigmas)
    s = frame_sigmas.view(b, 1, f, 1, 1)
    noisy = ((1 - s) * latents + s * noise).to(compute_dtype)
    pred, streams = _predict_with_streams(family, transformer, noisy, frame_sigmas.to(compute_dtype), batch, spec,
                                          diffusion.frame_rate, sigmas, generator, compute_dtype, weights)
    in_loss = (frame_sigmas > 0).float().view(b, 1, f, 1, 1)
    squared = weights * in_loss * (pred.float() - target) ** 2
    # The mean over the frames that are learned: a conditioned sample does not count for less.
    counted = (in_loss.expand_as(squared)).sum().clamp_min(1.0)
    return squared.sum() / counted + streams


#: Fixed noise levels of the held-out loss: spread over the range, comparable across runs.
HELDOUT_SIGMAS = (0.1, 0.3, 0.5, 0.7, 0.9)


@torch.no_grad()
def heldout_loss(family: ModelFamily, transformer: nn.Module, batch: Batch, spec: LatentSpec, frame_rate: float,
                 seed: int, compute_dtype: torch.dtype) -> float:
    """Unweighted flow-matching loss at fixed sigmas and fixed noise: deterministic for given weights."""
    latents = spec.normalize(batch.latents.float())
    generator = torch.Generator(device=latents.device).manual_seed(seed)
    total = 0.0
    for sigma in HELDOUT_SIGMAS:
        noise = torch.randn(latents.shape, generator=generator, device=latents.device)
        sigmas = torch.full((latents.shape[0],), sigma, device=latents.device)
        noisy = ((1 - sigma) * latents + sigma * noise).to(compute_dtype)
        pred, streams = _predict_with_streams(family, transformer, noisy, sigmas.to(compute_dtype), batch, spec,
                                              frame_rate, sigmas, generator, compute_dtype, torch.ones_like(sigmas))
        total += float(((pred.float() - (noise - latents)) ** 2).mean() + streams)
    return total / len(HELDOUT_SIGMAS)
