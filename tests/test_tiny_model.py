"""Tests for ray_ltx.model.tiny: the config-built LTX-Video pipelines that stand in for the hub model."""

from pathlib import Path

import pytest
import torch
from diffusers import (
    AutoencoderKLLTXVideo,
    FlowMatchEulerDiscreteScheduler,
    LTXPipeline,
    LTXVideoTransformer3DModel,
)
from transformers import T5EncoderModel, T5TokenizerFast

from ray_ltx.model.tiny import (
    TINY_LATENT_CHANNELS,
    TINY_TEXT_DIM,
    TINY_VOCAB_SIZE,
    build_text_encoder,
    build_tokenizer,
    build_transformer,
    build_vae,
    write_pipeline,
)

CAPTION = "BW_STYLE a red circle moving left on a blue background"


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_pipeline(tmp_path_factory.mktemp("tiny") / "ltx-video")


@pytest.fixture(scope="module")
def vae() -> AutoencoderKLLTXVideo:
    return build_vae()


def test_pipeline_loads_and_generates(tiny_pipeline_dir: Path) -> None:
    pipe = LTXPipeline.from_pretrained(tiny_pipeline_dir)
    video = pipe(
        CAPTION,
        num_frames=9,
        height=32,
        width=32,
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).frames
    assert video.shape == (1, 9, 32, 32, 3)
    assert pipe.tokenizer(CAPTION).input_ids == build_tokenizer()(CAPTION).input_ids


@pytest.mark.parametrize(
    ("subfolder", "component"),
    [
        ("transformer", LTXVideoTransformer3DModel),
        ("vae", AutoencoderKLLTXVideo),
        ("text_encoder", T5EncoderModel),
        ("tokenizer", T5TokenizerFast),
        ("scheduler", FlowMatchEulerDiscreteScheduler),
    ],
)
def test_each_component_loads_alone(tiny_pipeline_dir: Path, subfolder: str, component: type) -> None:
    assert isinstance(component.from_pretrained(tiny_pipeline_dir, subfolder=subfolder), component)


def test_scheduler_matches_ltx_video(tiny_pipeline_dir: Path) -> None:
    config = FlowMatchEulerDiscreteScheduler.from_pretrained(tiny_pipeline_dir, subfolder="scheduler").config
    expected = {
        "use_dynamic_shifting": True,
        "base_shift": 0.95,
        "max_shift": 2.05,
        "base_image_seq_len": 1024,
        "max_image_seq_len": 4096,
        "shift_terminal": 0.1,
    }
    assert {key: config[key] for key in expected} == expected


def test_rewrite_replaces_the_directory_and_leaves_no_staging(tmp_path: Path) -> None:
    out_dir = tmp_path / "model"
    write_pipeline(out_dir, seed=0)
    write_pipeline(out_dir, seed=1)
    assert [path.name for path in tmp_path.iterdir()] == ["model"]
    reloaded = LTXVideoTransformer3DModel.from_pretrained(out_dir, subfolder="transformer")
    assert _same_weights(reloaded, build_transformer(seed=1))


@pytest.mark.parametrize("build", [build_transformer, build_vae, build_text_encoder])
def test_seed_decides_the_weights(build) -> None:
    assert _same_weights(build(seed=0), build(seed=0))
    assert not _same_weights(build(seed=0), build(seed=1))


def test_tokenizer_splits_captions_into_known_pieces() -> None:
    tokenizer = build_tokenizer(max_length=32)
    ids = tokenizer(CAPTION, padding="max_length", max_length=32, truncation=True).input_ids
    tokens = tokenizer.convert_ids_to_tokens(ids)
    assert {"▁red", "▁circle", "▁moving", "▁left", "▁blue", "▁background"} <= set(tokens)
    assert tokenizer.unk_token_id not in ids
    end = tokens.index("</s>")
    assert len(ids) == 32
    assert tokens[end + 1 :] == ["<pad>"] * (31 - end)
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)


def test_tokenizer_is_deterministic_and_fits_the_text_encoder() -> None:
    tokenizer = build_tokenizer()
    assert tokenizer.get_vocab() == build_tokenizer().get_vocab()
    assert len(tokenizer) <= TINY_VOCAB_SIZE
    assert tokenizer.model_max_length == 128


def test_vae_keeps_real_compression(vae: AutoencoderKLLTXVideo) -> None:
    assert (vae.spatial_compression_ratio, vae.temporal_compression_ratio) == (32, 8)
    assert vae.latents_mean.shape == vae.latents_std.shape == (TINY_LATENT_CHANNELS,)
    assert "scaling_factor" in vae.config
    with torch.no_grad():
        latents = vae.encode(torch.randn(1, 3, 17, 64, 96)).latent_dist.mode()
        assert latents.shape == (1, TINY_LATENT_CHANNELS, 3, 2, 3)
        assert vae.decode(latents).sample.shape == (1, 3, 17, 64, 96)


@pytest.mark.parametrize(("frames", "height", "width"), [(9, 64, 96), (17, 64, 64), (1, 64, 64)])
def test_vae_encodes_buckets(vae: AutoencoderKLLTXVideo, frames: int, height: int, width: int) -> None:
    with torch.no_grad():
        latents = vae.encode(torch.randn(1, 3, frames, height, width)).latent_dist.mode()
    assert latents.shape == (1, TINY_LATENT_CHANNELS, (frames - 1) // 8 + 1, height // 32, width // 32)


def test_transformer_denoises_packed_latents() -> None:
    transformer = build_transformer()
    text_encoder = build_text_encoder()
    tokens = build_tokenizer()(
        CAPTION, padding="max_length", max_length=16, truncation=True, return_tensors="pt"
    )
    latents = torch.randn(1, TINY_LATENT_CHANNELS, 3, 2, 3)
    packed = LTXPipeline._pack_latents(latents)
    with torch.no_grad():
        text = text_encoder(tokens.input_ids, attention_mask=tokens.attention_mask).last_hidden_state
        assert text.shape == (1, 16, TINY_TEXT_DIM)
        prediction = transformer(
            hidden_states=packed,
            encoder_hidden_states=text,
            timestep=torch.tensor([500]),
            encoder_attention_mask=tokens.attention_mask,
            num_frames=3,
            height=2,
            width=3,
            rope_interpolation_scale=(8 / 25, 32, 32),
        ).sample
    assert packed.shape == (1, 18, TINY_LATENT_CHANNELS)
    assert prediction.shape == packed.shape


def test_full_sizes_match_ltx_video() -> None:
    transformer = build_transformer("full", dtype=torch.bfloat16, device="meta")
    assert sum(p.numel() for p in transformer.parameters()) == 1_923_385_472
    text_encoder = build_text_encoder("full", dtype=torch.bfloat16, device="meta")
    assert sum(p.numel() for p in text_encoder.parameters()) == 4_762_310_656
    assert text_encoder.config.d_model == transformer.config.caption_channels == 4096
    vae = build_vae("full", device="meta")
    assert (vae.spatial_compression_ratio, vae.temporal_compression_ratio) == (32, 8)
    assert vae.config.latent_channels == transformer.config.in_channels == 128


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_diffusers_export_to_video_runs_in_the_installed_environment(tmp_path: Path) -> None:
    """The README points at diffusers' inference example, which writes the mp4 with `export_to_video`."""
    import av
    import numpy as np
    from diffusers.utils import export_to_video

    frames = [np.full((64, 96, 3), i / 9, dtype=np.float32) for i in range(9)]
    path = export_to_video(frames, str(tmp_path / "output.mp4"), fps=8)
    with av.open(path) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(decoded) == 9 and decoded[0].shape == (64, 96, 3)
    assert decoded[-1].mean() > decoded[0].mean() + 100  # the frames are the ones given, in order
