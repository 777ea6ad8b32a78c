"""Encoders run as Ray Data actors: one model copy per actor, loaded once, batches in, bytes out.

:class:`VaeEncoder` turns decoded clips into VAE latents, one VAE call per bucket shape;
:class:`PromptEncoder` turns captions into prompt embeddings exactly as the model family's pipeline
encodes a prompt (padding to ``max_sequence_length``, truncation counted). The models and how they
are called come from the family (:mod:`ray_ltx.model.family`). Both run on a GPU when the actor was
given one and on the CPU otherwise (that is what the tests run).

Models load in the constructor: Ray Data creates a pool's actors as soon as the stream starts (not on the
first batch), so they load while the first clips decode.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from ray_ltx.config import Config
from ray_ltx.data.cache import extras_to_bytes, tensor_to_bytes
from ray_ltx.data.decode import OK, PROMPT_ONLY, stream_table
from ray_ltx.model.family import family_for


def _device() -> torch.device:
    # Ray sets CUDA_VISIBLE_DEVICES to the GPUs given to this actor; none means a CPU actor.
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class VaeEncoder:
    """Clips (uint8 frames) -> raw VAE latents (the posterior mean), grouped by bucket shape; with ``--audio``,
    their audio -> the family's extras (LTX-2's audio latents)."""

    def __init__(self, config: dict[str, Any]):
        self.config = Config.from_dict(config)
        self.device = _device()
        family = family_for(self.config)
        self.encoder = family.video_encoder(self.device)
        self.audio = family.audio_encoder(self.device) if self.config.data.audio != "off" else None
        self.batch_size = self.config.data.encode_batch_size
        self.spec = json.dumps(self.encoder.latent_spec.to_dict())

    def encode(self, frames: np.ndarray) -> torch.Tensor:
        """(B, F, H, W, 3) uint8 -> (B, C, F', H', W') latents in the VAE dtype."""
        return self.encoder.encode(torch.from_numpy(frames))

    def encode_audio(self, audio: bytes, shape: list[int], num_frames: int) -> dict[str, torch.Tensor]:
        """A clip's decoded audio (float32 bytes; empty: the clip has none) -> the family's extras."""
        waveform = torch.from_numpy(np.frombuffer(audio, np.float32).reshape(shape).copy()) if audio else None
        return self.audio.encode(waveform, num_frames, self.config.diffusion.frame_rate)

    def __call__(self, batch: dict[str, Any]) -> pa.Table:
        n = len(batch["sample_id"])
        latents: list[bytes] = [b""] * n
        shapes: list[list[int]] = [[] for _ in range(n)]
        dtypes = [""] * n
        groups: dict[str, list[int]] = defaultdict(list)
        for i, status in enumerate(batch["status"]):
            if status == OK:
                groups[batch["bucket"][i]].append(i)
        for indices in groups.values():
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start : start + self.batch_size]
                clips = [np.frombuffer(batch["frames"][i], np.uint8).reshape(batch["frames_shape"][i]) for i in chunk]
                encoded = self.encode(np.stack(clips))
                for k, i in enumerate(chunk):
                    latents[i], shapes[i], dtypes[i] = tensor_to_bytes(encoded[k])
        extras = [b""] * n
        if self.audio is not None:
            for indices in groups.values():
                for i in indices:
                    extras[i] = extras_to_bytes(self.encode_audio(batch["audio"][i], batch["audio_shape"][i],
                                                                  int(batch["frames_shape"][i][0])))
        out = {key: value for key, value in batch.items() if key not in ("frames", "frames_shape", "audio", "audio_shape")}
        out.update(latents=latents, latents_shape=shapes, latents_dtype=dtypes, latent_spec=[self.spec] * n,
                   extras=extras)
        return stream_table(out)


class PromptEncoder:
    """Captions -> prompt embeddings and attention masks, as the family's pipeline makes them."""

    def __init__(self, config: dict[str, Any]):
        self.config = Config.from_dict(config)
        self.device = _device()
        family = family_for(self.config)
        self.encoder = family.prompt_encoder(self.device)
        self.max_length = family.max_sequence_length()
        self.batch_size = 4 * self.config.data.encode_batch_size

    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor, list[bool]]:
        encoded = self.encoder.encode(prompts, self.max_length)
        return encoded.embeds, encoded.mask, encoded.truncated

    def __call__(self, batch: dict[str, Any]) -> pa.Table:
        n = len(batch["sample_id"])
        embeds: list[bytes] = [b""] * n
        shapes: list[list[int]] = [[] for _ in range(n)]
        dtypes = [""] * n
        masks: list[bytes] = [b""] * n
        truncated = [False] * n
        todo = [i for i, status in enumerate(batch["status"]) if status in (OK, PROMPT_ONLY)]
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start : start + self.batch_size]
            encoded, mask, cut = self.encode([str(batch["caption"][i]) for i in chunk])
            for k, i in enumerate(chunk):
                embeds[i], shapes[i], dtypes[i] = tensor_to_bytes(encoded[k])
                masks[i] = mask[k].numpy().astype(np.uint8).tobytes()
                truncated[i] = cut[k]
        out = dict(batch)
        out.update(prompt_embeds=embeds, prompt_embeds_shape=shapes, prompt_embeds_dtype=dtypes,
                   prompt_attention_mask=masks, caption_truncated=truncated)
        return stream_table(out)
