"""Encoders run as Ray Data actors: one model copy per actor, loaded once, batches in, bytes out.

:class:`VaeEncoder` turns decoded clips into VAE latents, one VAE call per bucket shape;
:class:`PromptEncoder` turns captions into T5 embeddings exactly as ``LTXPipeline`` encodes a
prompt (padding to ``max_sequence_length``, truncation counted). Both run on a GPU when the actor
was given one and on the CPU otherwise (that is what the tests run).
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

import numpy as np
import torch

from ray_ltx.config import Config
from ray_ltx.data.cache import tensor_to_bytes
from ray_ltx.model.loading import load_text_encoder, load_tokenizer, load_vae, torch_dtype
from ray_ltx.model.recipe import LatentSpec

#: Row statuses flowing through the pipeline.
OK = "ok"
PROMPT_ONLY = "prompt_only"  # the empty prompt, encoded once for caption dropout


def _device() -> torch.device:
    # Ray sets CUDA_VISIBLE_DEVICES to the GPUs given to this actor; none means a CPU actor.
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class VaeEncoder:
    """Clips (uint8 frames) -> raw VAE latents (the posterior mean), grouped by bucket shape."""

    def __init__(self, config: dict[str, Any]):
        self.config = Config.from_dict(config)
        self.device = _device()
        self.vae = load_vae(self.config, self.device)
        self.dtype = torch_dtype(self.config.model.vae_dtype)
        self.batch_size = self.config.data.encode_batch_size
        self.spec = json.dumps(LatentSpec.from_vae(self.vae).to_dict())

    @torch.inference_mode()
    def encode(self, frames: np.ndarray) -> torch.Tensor:
        """(B, F, H, W, 3) uint8 -> (B, C, F', H', W') latents in the VAE dtype."""
        video = torch.from_numpy(frames).to(self.device, non_blocking=True)
        video = video.permute(0, 4, 1, 2, 3).to(self.dtype).div_(127.5).sub_(1.0)
        return self.vae.encode(video).latent_dist.mode()

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
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
        out = {key: value for key, value in batch.items() if key not in ("frames", "frames_shape")}
        out.update(latents=latents, latents_shape=shapes, latents_dtype=dtypes, latent_spec=[self.spec] * n)
        return out


class PromptEncoder:
    """Captions -> T5 prompt embeddings and attention masks, as ``LTXPipeline.encode_prompt`` makes them."""

    def __init__(self, config: dict[str, Any]):
        self.config = Config.from_dict(config)
        self.device = _device()
        self.tokenizer = load_tokenizer(self.config)
        self.text_encoder = load_text_encoder(self.config, self.device)
        self.max_length = self.config.data.max_sequence_length
        self.batch_size = 4 * self.config.data.encode_batch_size

    @torch.inference_mode()
    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor, list[bool]]:
        inputs = self.tokenizer(prompts, padding="max_length", max_length=self.max_length, truncation=True,
                                add_special_tokens=True, return_tensors="pt")
        full_lengths = [len(ids) for ids in self.tokenizer(prompts, add_special_tokens=True)["input_ids"]]
        # LTXPipeline runs the encoder without the attention mask; do the same so training sees what inference sees.
        embeds = self.text_encoder(inputs.input_ids.to(self.device))[0]
        return embeds, inputs.attention_mask.bool(), [length > self.max_length for length in full_lengths]

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
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
        return out
