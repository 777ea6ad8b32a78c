"""LTX-2, the second model family: detection, the transformer call against LTX2Pipeline's, the frozen audio branch of
video-only training, joint audio-video training, LoRA export and its refusal for another model, and audio
preprocessing with its skips.

The fast tests run a tiny random-weight LTX-2 (built from configs, loaded through the same from_pretrained code as
Lightricks/LTX-2); the slow ones preprocess, train, resume, export and generate on Ray as a user would.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import base_config
from ray_ltx.config import build_config
from ray_ltx.data.audio import AudioError, decode_audio, log_mel_spectrogram
from ray_ltx.data.samples import moving_shape_frames, tone, write_sample_dataset
from ray_ltx.errors import ConfigError, DatasetError
from ray_ltx.media import write_video
from ray_ltx.model.family import Batch, family_for
from ray_ltx.model.flow import flow_matching_loss
from ray_ltx.model.lora import add_lora, export_comfyui, save_diffusers_lora
from ray_ltx.model.ltx2 import AUDIO, AUDIO_PRESENT, audio_latent_frames
from ray_ltx.model.ltx_video import unpack_latents
from ray_ltx.model.tiny import write_pipeline, write_single_file

PROMPT = "BW_STYLE A red circle moves from left to right across a plain black background."
TOKENS = 128  # a multiple of the connectors' 128 registers; the family's default (1024) is checked once
CPU = torch.device("cpu")
#: One forward per step: no classifier-free, spatio-temporal or modality guidance.
NO_GUIDANCE = {"guidance_scale": 1.0, "audio_guidance_scale": 1.0, "stg_scale": 0.0, "audio_stg_scale": 0.0,
               "modality_scale": 1.0, "audio_modality_scale": 1.0}
AUDIO_BRANCH = re.compile(r"audio|a2v|av_cross_attn")


@pytest.fixture(scope="session")
def tiny_ltx2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_pipeline(tmp_path_factory.mktemp("ltx2") / "tiny-ltx2", family="ltx2")


def _config(model: Path | str, **values):
    return build_config({"pretrained_model_name_or_path": str(model), "max_sequence_length": TOKENS,
                         "frame_rate": 24, "transformer_dtype": "fp32", **values})


def _batch(family, audio: torch.Tensor | None = None, present: list[bool] | None = None) -> tuple[Batch, object]:
    """Two encoded 9x64x96 clips and their prompts, optionally with audio latents."""
    encoder = family.video_encoder(CPU)
    clip = torch.randint(0, 255, (2, 9, 64, 96, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    prompts = family.prompt_encoder(CPU).encode(["a red ball", "a blue cube"], TOKENS)
    extras = {} if audio is None else {AUDIO: audio, AUDIO_PRESENT: torch.tensor(present)}
    batch = Batch(encoder.encode(clip).clone(), prompts.embeds.clone(), prompts.mask.clone(), extras)
    return batch, encoder.latent_spec


def _render(pipe, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """Video and audio latents of two denoising steps (no decoding)."""
    return pipe(prompt=PROMPT, num_frames=9, height=64, width=96, num_inference_steps=2, output_type="latent",
                generator=torch.Generator().manual_seed(0), frame_rate=24, max_sequence_length=TOKENS,
                return_dict=False, **NO_GUIDANCE, **kwargs)


# -- detection and loading ------------------------------------------------------------------------------------


def test_ltx2_checkpoints_are_detected_and_ltx_video_ones_are_not_claimed(tiny_ltx2: Path, tiny_model: Path,
                                                                          tmp_path: Path) -> None:
    family = family_for(_config(tiny_ltx2))
    assert (family.name, family.describe()) == ("ltx2", "LTX-2 (2-layer)")
    assert family_for(_config("Lightricks/LTX-2")).name == "ltx2"  # a known Hub id: no network needed
    assert family_for(_config(tiny_model)).name == "ltx_video"
    only_transformer = tmp_path / "only-transformer"
    (only_transformer / "transformer").mkdir(parents=True)
    (only_transformer / "transformer" / "config.json").write_text(
        (tiny_ltx2 / "transformer" / "config.json").read_text())
    assert family_for(_config(only_transformer)).name == "ltx2"
    # Prompts are padded as the pipeline pads them unless told otherwise: 1024 Gemma tokens, not T5's 128.
    assert family_for(build_config({"pretrained_model_name_or_path": str(tiny_ltx2)})).max_sequence_length() == 1024
    assert family_for(build_config({"pretrained_model_name_or_path": str(tiny_model)})).max_sequence_length() == 128


def test_a_single_file_loads_the_same_transformer_as_its_folder(tiny_ltx2: Path, tiny_model: Path,
                                                                 tmp_path: Path) -> None:
    single = write_single_file(tiny_ltx2, tmp_path / "ltx-2-tiny-dev.safetensors")
    family = family_for(_config(single, base_model_name_or_path=str(tiny_ltx2)))
    assert family.name == "ltx2"
    family.check_training()
    loaded = family.load_transformer(torch.float32).state_dict()
    reference = family_for(_config(tiny_ltx2)).load_transformer(torch.float32).state_dict()
    assert loaded.keys() == reference.keys() and all(torch.equal(loaded[k], reference[k]) for k in reference)
    with pytest.raises(ConfigError, match="does not match --base_model_name_or_path"):
        family_for(_config(single, base_model_name_or_path=str(tiny_model))).check_training()


def test_benchmarks_can_build_the_full_size_transformer_without_memory() -> None:
    from ray_ltx.model.tiny import build_ltx2_transformer

    transformer = build_ltx2_transformer("full", torch.bfloat16, device="meta")
    assert len(transformer.transformer_blocks) == 48 and transformer.proj_in.out_features == 4096
    assert 18.8e9 < sum(p.numel() for p in transformer.parameters()) < 19e9


# -- the transformer call -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("image_to_video", [False, True], ids=["text", "image"])
def test_a_denoising_step_is_the_pipelines(tiny_ltx2: Path, image_to_video: bool) -> None:
    """Same inputs, same prediction: the cached prompt, the packing, the (per-token) timesteps, the audio stream's
    inputs and the frame rate are what LTX2Pipeline / LTX2ImageToVideoPipeline feed the transformer."""
    family = family_for(_config(tiny_ltx2))
    pipe = family.pipeline(CPU, torch.float32, image_to_video=image_to_video)
    calls = []
    pipe.transformer.register_forward_hook(lambda _, __, kwargs, out: calls.append((kwargs, out)), with_kwargs=True)
    image = {"image": Image.fromarray(moving_shape_frames(1, 64, 96)[0])} if image_to_video else {}
    _render(pipe, **image)
    kwargs, (video_out, audio_out) = calls[-1]  # the second step: sigma < 1
    prompts = family.prompt_encoder(CPU).encode([PROMPT], TOKENS)
    assert torch.equal(prompts.embeds, torch.cat([kwargs["encoder_hidden_states"],
                                                  kwargs["audio_encoder_hidden_states"]], dim=-1))
    shape = (1, 8, 2, 2, 3)
    timestep = kwargs["timestep"] / 1000
    if image_to_video:  # per token; clean first frame
        assert timestep.shape == (1, 12) and torch.all(timestep[:, :6] == 0) and torch.all(timestep[:, 6:] > 0)
        sigmas = timestep.view(1, 2, 6)[:, :, 0]
    else:
        sigmas = timestep
    batch = Batch(torch.zeros(shape), prompts.embeds, prompts.mask, {AUDIO: kwargs["audio_hidden_states"]})
    with torch.no_grad():
        video, streams = family.predict_joint(pipe.transformer, unpack_latents(kwargs["hidden_states"], shape),
                                              sigmas, batch, family.video_encoder(CPU).latent_spec, 24.0)
    torch.testing.assert_close(video, unpack_latents(video_out, shape), rtol=0, atol=0)
    torch.testing.assert_close(streams[AUDIO], audio_out, rtol=0, atol=0)


@pytest.mark.parametrize("training_type", ["lora", "full-finetune"])
def test_video_only_training_leaves_the_audio_branch_frozen(tiny_ltx2: Path, training_type: str) -> None:
    from ray_ltx.train.loop import prepare_transformer

    config = _config(tiny_ltx2, training_type=training_type)
    family = family_for(config)
    transformer, count = prepare_transformer(config, family, CPU)
    trainable = {n: p for n, p in transformer.named_parameters() if p.requires_grad}
    assert trainable and count == sum(p.numel() for p in trainable.values())
    assert not [n for n in trainable if AUDIO_BRANCH.search(n)]
    batch, spec = _batch(family)
    flow_matching_loss(family, transformer, batch, spec, config.diffusion, torch.Generator().manual_seed(0),
                       torch.float32).backward()
    assert all(p.grad is not None for p in trainable.values())
    assert all(p.grad is None for n, p in transformer.named_parameters() if AUDIO_BRANCH.search(n))


def test_with_audio_lora_targets_reach_the_audio_branch(tiny_ltx2: Path) -> None:
    from ray_ltx.train.loop import prepare_transformer

    config = _config(tiny_ltx2, audio="on", frame_sampling="fps", sample_fps=24)
    transformer, _ = prepare_transformer(config, family_for(config), CPU)
    trainable = [n for n, p in transformer.named_parameters() if p.requires_grad]
    assert any(".audio_attn1.to_q.lora_A" in n for n in trainable)
    assert any(".audio_to_video_attn.to_k.lora_A" in n for n in trainable)


def test_audio_is_learned_only_for_clips_that_have_it(tiny_ltx2: Path) -> None:
    family = family_for(_config(tiny_ltx2, audio="on", frame_sampling="fps", sample_fps=24))
    transformer = family.load_transformer(torch.float32).eval()
    length = audio_latent_frames(9, 24.0, family.component_config("audio_vae"))
    batch, spec = _batch(family, torch.randn(2, length, 32, generator=torch.Generator().manual_seed(1)),
                         [True, False])
    diffusion = _config(tiny_ltx2).diffusion
    original = family.predict_joint

    def loss(wrong_sample: int | None) -> float:
        def predict_joint(*args, **kwargs):
            video, streams = original(*args, **kwargs)
            audio = streams[AUDIO].clone()
            if wrong_sample is not None:
                audio[wrong_sample] += 10.0  # a wildly wrong audio velocity for one sample
            return video, {AUDIO: audio}

        family.predict_joint = predict_joint
        try:
            with torch.no_grad():
                return float(flow_matching_loss(family, transformer, batch, spec, diffusion,
                                                torch.Generator().manual_seed(3), torch.float32))
        finally:
            family.predict_joint = original

    assert loss(0) > loss(None) + 50
    assert loss(1) == pytest.approx(loss(None), rel=1e-6)


# -- LoRA export and generate ---------------------------------------------------------------------------------------


def _lora(config, directory: Path) -> Path:
    """A LoRA of ``config``'s model with random (non-zero) weights, written as training exports it."""
    family = family_for(config)
    transformer = family.load_transformer(torch.float32)
    add_lora(transformer, config, family.frozen_modules())
    generator = torch.Generator().manual_seed(0)
    weights = {}
    for name, param in transformer.named_parameters():
        if param.requires_grad:
            param.data = torch.randn(param.shape, generator=generator) * 0.5
            weights[name] = param.data
    save_diffusers_lora(directory, transformer, weights, config, family)
    return directory


def test_a_lora_loads_in_ltx2pipeline_changes_it_and_its_comfyui_copy_matches(tiny_ltx2: Path, tmp_path: Path) -> None:
    from diffusers import LTX2Pipeline

    config = _config(tiny_ltx2, rank=4, lora_alpha=8)
    lora_dir = _lora(config, tmp_path / "lora")
    pipe = LTX2Pipeline.from_pretrained(tiny_ltx2)
    reference, _ = _render(pipe)
    pipe.load_lora_weights(str(lora_dir), adapter_name="diffusers")
    with_lora, _ = _render(pipe)
    assert not torch.allclose(with_lora, reference, atol=1e-3)
    comfyui = export_comfyui(lora_dir, tmp_path / "comfyui.safetensors", prefix=family_for(config).comfyui_prefix)
    from safetensors import safe_open

    with safe_open(str(comfyui), framework="pt") as handle:
        assert all(k.startswith("diffusion_model.transformer_blocks.") for k in handle.keys())  # noqa: SIM118
    pipe.delete_adapters("diffusers")
    pipe.load_lora_weights(str(comfyui), adapter_name="comfyui")  # diffusers' own reader of the ComfyUI layout
    torch.testing.assert_close(_render(pipe)[0], with_lora)


def test_generate_refuses_a_lora_trained_for_ltx_video(tiny_ltx2: Path, tiny_model: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    from ray_ltx.generate import generate_video

    lora_dir = _lora(build_config({"pretrained_model_name_or_path": str(tiny_model), "rank": 4, "lora_alpha": 4}),
                     tmp_path / "ltx-video-lora")
    options = {"model": str(tiny_ltx2), "prompt": PROMPT, "num_frames": 9, "height": 64, "width": 96, "steps": 1}
    with pytest.raises(ConfigError, match=r"does not fit LTX-2 .*trained for LTX-Video 0\.9\.0"):
        generate_video(lora=str(lora_dir), out=str(tmp_path / "a.mp4"), **options)
    # Another trainer's file carries no ray-ltx mark: its layers' shapes give it away.
    bare = tmp_path / "bare.safetensors"
    save_file(load_file(str(lora_dir / "pytorch_lora_weights.safetensors")), str(bare))
    with pytest.raises(ConfigError, match=r"layer transformer_blocks\.0\.\S+ has 32 input features, the LoRA 64"):
        generate_video(lora=str(bare), out=str(tmp_path / "b.mp4"), **options)


# -- audio ------------------------------------------------------------------------------------------------------------


def test_audio_track_decodes_to_the_span_of_the_frames_and_its_pitch(tmp_path: Path) -> None:
    frames = moving_shape_frames(24, 64, 96)
    write_video(tmp_path / "low.mp4", frames, fps=24, audio=tone(1.0, 440.0))
    write_video(tmp_path / "high.mp4", frames, fps=24, audio=tone(1.0, 1760.0))
    write_video(tmp_path / "silent.mp4", frames, fps=24)
    low = decode_audio(str(tmp_path / "low.mp4"), 0.25, 0.5, 16000)
    assert low.shape == (2, 8000) and low.dtype == np.float32 and np.array_equal(low[0], low[1])
    assert decode_audio(str(tmp_path / "silent.mp4"), 0.0, 0.5, 16000) is None
    mels = [log_mel_spectrogram(torch.from_numpy(decode_audio(str(tmp_path / f"{name}.mp4"), 0.25, 0.5, 16000)),
                                16000, 160, 64) for name in ("low", "high")]
    assert mels[0].shape == (2, 8000 // 160 + 1, 64)
    # the loudest mel bin moves up with the pitch
    assert int(mels[0].mean(dim=(0, 1)).argmax()) < int(mels[1].mean(dim=(0, 1)).argmax())


def _corrupt_audio(path: Path) -> Path:
    """Overwrite every audio packet of ``path`` with noise: the video still decodes, the audio does not."""
    import av

    with av.open(str(path)) as container:
        packets = [(p.pos, p.size) for p in container.demux(container.streams.audio[0]) if p.size]
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(0)
    for position, size in packets:
        data[position:position + size] = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    return path


def test_an_undecodable_audio_track_is_an_audio_error(tmp_path: Path) -> None:
    write_video(tmp_path / "clip.mp4", moving_shape_frames(24, 64, 96), fps=24, audio=tone(1.0))
    with pytest.raises(AudioError, match="does not decode") as error:
        decode_audio(str(_corrupt_audio(tmp_path / "clip.mp4")), 0.0, 0.5, 16000)
    assert error.value.reason == "audio_unreadable"


def test_audio_needs_frames_sampled_at_the_models_frame_rate(tiny_ltx2: Path, tiny_model: Path) -> None:
    with pytest.raises(ConfigError, match="--frame_sampling fps --sample_fps 24"):
        family_for(_config(tiny_ltx2, audio="on")).check_training()
    with pytest.raises(ConfigError, match="--audio required: LTX-Video .* generates no audio"):
        family_for(build_config({"pretrained_model_name_or_path": str(tiny_model), "audio": "required"})).check_training()


@pytest.mark.usefixtures("ray_cluster")
def test_audio_preprocessing_skips_and_reports_clips_without_usable_audio(tiny_ltx2: Path, tmp_path: Path) -> None:
    from ray_ltx.data.cache import LatentCache
    from ray_ltx.data.pipeline import preprocess

    root = tmp_path / "data"
    (root / "videos").mkdir(parents=True)
    frames = moving_shape_frames(12, 64, 96)
    write_video(root / "videos" / "sound.mp4", frames, fps=24, audio=tone(0.5))
    write_video(root / "videos" / "silent.mp4", frames, fps=24)
    write_video(root / "videos" / "broken.mp4", frames, fps=24, audio=tone(0.5))
    _corrupt_audio(root / "videos" / "broken.mp4")
    (root / "videos.txt").write_text("videos/sound.mp4\nvideos/silent.mp4\nvideos/broken.mp4\n")
    (root / "prompts.txt").write_text("a tone\nsilence\na broken track\n")
    audio = {"audio": "required", "frame_sampling": "fps", "sample_fps": 24, "frame_rate": 24,
             "max_sequence_length": TOKENS, "video_resolution_buckets": ["9x64x96"], "num_workers": 1}
    manifest = preprocess(base_config(tiny_ltx2, root, tmp_path / "out", **audio))
    assert manifest.num_samples == 1
    assert manifest.skips_per_reason() == {"audio_unreadable": 1, "no_audio": 1}
    assert {Path(s["path"]).name: s["reason"] for s in manifest.skipped} == {"silent.mp4": "no_audio",
                                                                             "broken.mp4": "audio_unreadable"}
    cache = LatentCache.open(str(tmp_path / "out" / "cache"))
    from ray_ltx.data.cache import row_to_tensors

    extras = row_to_tensors(cache.read(cache.sample_ids())[0])["extras"]
    assert extras[AUDIO].shape == (audio_latent_frames(9, 24.0, family_for(_config(tiny_ltx2))
                                                       .component_config("audio_vae")), 32)
    assert bool(extras[AUDIO_PRESENT]) and float(extras[AUDIO].abs().sum()) > 0

    # A dataset without any audio, asked for it: every clip skipped, and the count says why.
    silent = tmp_path / "silent"
    (silent / "videos.txt").parent.mkdir()
    for name in ("a", "b"):
        write_video(silent / f"{name}.mp4", frames, fps=24)
    (silent / "videos.txt").write_text("a.mp4\nb.mp4\n")
    (silent / "prompts.txt").write_text("one\ntwo\n")
    with pytest.raises(DatasetError, match=r"every input was skipped \(no_audio: 2\)"):
        preprocess(base_config(tiny_ltx2, silent, tmp_path / "none", **audio))


# -- end to end (slow) ------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")
def test_ltx2_trains_image_to_video_resumes_exports_and_generates(tiny_ltx2: Path, sample_data: Path,
                                                                  tmp_path: Path) -> None:
    from diffusers import LTX2ImageToVideoPipeline, LTX2VideoTransformer3DModel

    from ray_ltx.generate import generate_video
    from ray_ltx.train.driver import train

    image = tmp_path / "first_frame.png"
    Image.fromarray(np.full((80, 96, 3), (200, 30, 30), np.uint8)).save(image)
    common = {"cache_dir": str(tmp_path / "cache"), "video_resolution_buckets": ["9x64x96"], "num_workers": 1,
              "first_frame_conditioning_p": 0.5, "checkpointing_steps": 2, "lr": 5e-3, "max_sequence_length": TOKENS,
              "frame_rate": 24}
    lora_out = tmp_path / "lora"
    assert train(base_config(tiny_ltx2, sample_data, lora_out, train_steps=2, **common)).steps == 2
    resumed = train(base_config(tiny_ltx2, sample_data, lora_out, train_steps=3, resume_from_checkpoint="latest",
                                validation_prompts=[PROMPT], validation_images=[str(image)], validation_num_frames=9,
                                validation_height=64, validation_width=96, validation_inference_steps=2, **common))
    assert json.loads((Path(resumed.checkpoint) / "state.json").read_text())["step"] == 3
    assert list((lora_out / "validation" / "step_000003").glob("*.mp4"))

    # the LoRA loads in LTX2ImageToVideoPipeline and changes its output; generate takes it
    pipe = LTX2ImageToVideoPipeline.from_pretrained(tiny_ltx2)
    picture = Image.open(image).convert("RGB").resize((96, 64))
    reference, _ = _render(pipe, image=picture)
    pipe.load_lora_weights(str(lora_out), adapter_name="i2v")
    assert not torch.allclose(_render(pipe, image=picture)[0], reference, atol=1e-4)
    video = generate_video(model=str(tiny_ltx2), lora=str(lora_out), prompt=PROMPT, image=str(image), num_frames=9,
                           height=64, width=96, steps=2, out=str(tmp_path / "i2v.mp4"))
    assert video.stat().st_size > 0

    # a full finetune saves a transformer/ that loads with from_pretrained; video-only, its audio branch is the base's
    full = train(base_config(tiny_ltx2, sample_data, tmp_path / "full", training_type="full-finetune", train_steps=1,
                             optimizer="adamw", **{**common, "lr": 1e-3}))
    finetuned = dict(LTX2VideoTransformer3DModel.from_pretrained(Path(full.output_dir) / "transformer")
                     .named_parameters())
    base = dict(LTX2VideoTransformer3DModel.from_pretrained(tiny_ltx2, subfolder="transformer").named_parameters())
    assert all(torch.equal(finetuned[n], p) for n, p in base.items() if AUDIO_BRANCH.search(n))
    assert any(not torch.equal(finetuned[n], p) for n, p in base.items() if not AUDIO_BRANCH.search(n))


@pytest.mark.full
@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")
def test_ltx2_learns_audio_and_video_jointly(tiny_ltx2: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    from diffusers import LTX2Pipeline
    from safetensors import safe_open

    from ray_ltx.train.driver import train

    data = write_sample_dataset(tmp_path_factory.mktemp("audio-data") / "clips", num_clips=4, audio=True)
    out = tmp_path_factory.mktemp("joint") / "out"
    result = train(base_config(tiny_ltx2, data, out, video_resolution_buckets=["9x64x96"], num_workers=1,
                               train_steps=2, lr=5e-3, audio="on", frame_sampling="fps", sample_fps=24,
                               frame_rate=24, max_sequence_length=TOKENS))
    assert result.steps == 2
    with safe_open(str(out / "pytorch_lora_weights.safetensors"), framework="pt") as handle:
        keys = list(handle.keys())  # noqa: SIM118
    assert any(".audio_attn1." in k for k in keys) and any(".attn1." in k and "audio" not in k for k in keys)
    pipe = LTX2Pipeline.from_pretrained(tiny_ltx2)
    _, reference_audio = _render(pipe)
    pipe.load_lora_weights(str(out), adapter_name="joint")
    assert not torch.allclose(_render(pipe)[1], reference_audio, atol=1e-4)
