"""The model-family seam: LTX-Video versions (0.9.1, 0.9.5, the 13B shape), single files, image-to-video training.

The fast tests check detection, the single-file loader and the flow-matching loss with first-frame conditioning
on tiny random-weight models; the slow ones preprocess, train, resume, export and generate each tiny version
end to end on Ray, as a user would.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ray_ltx.config import build_config
from ray_ltx.errors import CacheError, ConfigError
from ray_ltx.model.family import Batch, family_for
from ray_ltx.model.flow import flow_matching_loss
from ray_ltx.model.ltx_video import single_file_vae_generation
from ray_ltx.model.tiny import write_pipeline, write_single_file

VERSIONS = {"0.9.1": "LTX-Video 0.9.1", "0.9.5": "LTX-Video 0.9.5+", "0.9.7-13b": "LTX-Video 0.9.5+"}


@pytest.fixture(scope="session")
def tiny_versions(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("versions")
    return {version: write_pipeline(root / f"ltx-{version}", version=version) for version in VERSIONS}


def _family(model: Path | str, **values):
    return family_for(build_config({"pretrained_model_name_or_path": str(model), **values}))


def _batch(family, frames: int) -> tuple[Batch, object]:
    encoder = family.video_encoder(torch.device("cpu"))
    clip = torch.randint(0, 255, (2, frames, 64, 96, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    latents = encoder.encode(clip).clone()
    prompts = family.prompt_encoder(torch.device("cpu")).encode(["a red ball", "a blue cube"], 16)
    return Batch(latents, prompts.embeds.clone(), prompts.mask.clone()), encoder.latent_spec


# -- detection and loading ------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", list(VERSIONS))
def test_each_version_is_detected_from_its_configs(tiny_versions: dict[str, Path], version: str) -> None:
    family = _family(tiny_versions[version])
    assert family.name == "ltx_video"
    assert family.describe().startswith(VERSIONS[version])
    timestep_conditioned = family.pipeline_kwargs()
    assert timestep_conditioned == {"decode_timestep": 0.05, "decode_noise_scale": 0.025}
    assert family.inference_defaults() == {"num_inference_steps": 30, "guidance_scale": 3.0}


def test_distilled_checkpoints_default_to_few_steps_without_guidance(tiny_versions: dict[str, Path]) -> None:
    family = _family(tiny_versions["0.9.5"], model_variant="distilled")
    assert family.inference_defaults() == {"num_inference_steps": 8, "guidance_scale": 1.0}


def test_the_original_tiny_model_is_0_9_0_without_decode_timestep(tiny_model: Path) -> None:
    family = _family(tiny_model)
    assert family.describe().startswith("LTX-Video 0.9.0") and family.pipeline_kwargs() == {}


def test_a_single_file_loads_the_same_transformer_as_its_folder(tiny_versions: dict[str, Path], tmp_path: Path) -> None:
    folder = tiny_versions["0.9.7-13b"]
    single = write_single_file(folder, tmp_path / "ltxv-13b-tiny-dev.safetensors")
    family = _family(single, base_model_name_or_path=str(folder))
    family.check_training()
    from_file = family.load_transformer(torch.float32)
    from_folder = _family(folder).load_transformer(torch.float32)
    reference = from_folder.state_dict()
    loaded = from_file.state_dict()
    assert loaded.keys() == reference.keys()
    assert all(torch.equal(loaded[k], reference[k]) for k in reference)


def test_a_single_file_of_another_version_than_its_base_is_refused(tiny_versions: dict[str, Path],
                                                                     tmp_path: Path) -> None:
    single = write_single_file(tiny_versions["0.9.7-13b"], tmp_path / "ltxv-13b.safetensors")
    with pytest.raises(ConfigError, match="does not match --base_model_name_or_path") as error:
        _family(single, base_model_name_or_path=str(tiny_versions["0.9.5"])).check_training()
    assert "3 layers of width 128" in str(error.value) and "2 layers of width 64" in str(error.value)


def test_single_file_vae_generation_from_key_names() -> None:
    old_encoder = {f"vae.encoder.down_blocks.{i}.res_blocks.0.conv1.conv.weight" for i in range(10)}
    assert single_file_vae_generation(frozenset(old_encoder)) == "0.9.0"
    timestep = old_encoder | {"vae.decoder.last_time_embedder.timestep_embedder.linear_1.weight"}
    assert single_file_vae_generation(frozenset(timestep)) == "0.9.1"
    new_encoder = {f"vae.encoder.down_blocks.{i}.res_blocks.0.conv1.conv.weight" for i in range(9)}
    assert single_file_vae_generation(frozenset(new_encoder)) == "0.9.5+"
    assert single_file_vae_generation(frozenset({"model.diffusion_model.patchify_proj.weight"})) is None


def test_a_checkpoint_of_no_known_family_says_what_was_found(tmp_path: Path) -> None:
    folder = tmp_path / "sd"
    (folder / "transformer").mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    with pytest.raises(ConfigError) as error:
        _family(folder)
    message = str(error.value)
    assert "StableDiffusionPipeline" in message and "ltx_video" in message and "--model_name" in message
    with pytest.raises(ConfigError, match="not a readable safetensors"):
        (tmp_path / "broken.safetensors").write_bytes(b"not safetensors")
        _family(tmp_path / "broken.safetensors")


def test_hub_ids_of_known_families_need_no_network() -> None:
    assert _family("Lightricks/LTX-Video-0.9.7-dev").name == "ltx_video"


@pytest.mark.parametrize("value", [-0.1, 1.5])
def test_first_frame_conditioning_p_outside_0_1_is_refused(value: float) -> None:
    with pytest.raises(ConfigError, match="first_frame_conditioning_p"):
        build_config({"first_frame_conditioning_p": value})


def test_validation_sizes_the_pipeline_cannot_take_are_refused() -> None:
    with pytest.raises(ConfigError, match="validation_height 500.*multiple of 32"):
        build_config({"validation_height": 500})
    with pytest.raises(ConfigError, match="validation_num_frames 48"):
        build_config({"validation_num_frames": 48})


# -- image-to-video in the loss --------------------------------------------------------------------------------


def test_with_p_1_the_first_frame_is_clean_and_out_of_the_loss(tiny_versions: dict[str, Path]) -> None:
    family = _family(tiny_versions["0.9.5"])
    transformer = family.load_transformer(torch.float32).eval()
    batch, spec = _batch(family, frames=9)
    diffusion = build_config({}).diffusion
    seen: list[torch.Tensor] = []
    transformer.register_forward_pre_hook(lambda _, __, kwargs: seen.append(kwargs["timestep"]), with_kwargs=True)

    def loss(p: float, first_frame_offset: float) -> float:
        original = family.predict

        def predict(*args, **kwargs):
            pred = original(*args, **kwargs).clone()
            pred[:, :, 0] += first_frame_offset  # a wildly wrong first-frame prediction
            return pred

        family.predict = predict
        try:
            with torch.no_grad():
                return float(flow_matching_loss(family, transformer, batch, spec, diffusion,
                                                torch.Generator().manual_seed(3), torch.float32, p))
        finally:
            family.predict = original

    assert loss(1.0, 0.0) == pytest.approx(loss(1.0, 100.0), rel=1e-6)
    assert loss(0.0, 100.0) > 10 * loss(0.0, 0.0)
    # The per-token timesteps reached the transformer: 0 on the first frame's tokens, sigma * 1000 elsewhere.
    timestep = seen[0]
    _, _, f, h, w = batch.latents.shape
    assert timestep.shape == (2, f * h * w)
    assert torch.all(timestep[:, : h * w] == 0)
    assert torch.all(timestep[:, h * w :] > 0)
    assert torch.all(timestep[:, h * w :] == timestep[:, h * w : h * w + 1])


@pytest.mark.parametrize("version", ["0.9.0", "0.9.7-13b"])
def test_per_frame_timesteps_compute_what_per_token_timesteps_compute(version: str) -> None:
    """Training passes one timestep per latent frame (cheap); diffusers' pipelines pass one per token."""
    import copy

    from ray_ltx.model.ltx_video import enable_frame_timesteps
    from ray_ltx.model.tiny import build_transformer

    reference = build_transformer("tiny", version=version, seed=1).eval()
    framed = copy.deepcopy(reference)
    enable_frame_timesteps(framed)
    b, f, h, w = 2, 3, 2, 3
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(b, f * h * w, 8, generator=generator)
    text = torch.randn(b, 7, 32, generator=generator)
    mask = torch.ones(b, 7, dtype=torch.bool)
    mask[1, 4:] = False
    per_frame = torch.tensor([[0.0, 500.0, 500.0], [0.0, 900.0, 900.0]])
    kwargs = {"encoder_hidden_states": text, "encoder_attention_mask": mask, "num_frames": f, "height": h,
              "width": w, "rope_interpolation_scale": (8 / 25, 32.0, 32.0), "return_dict": False}
    expected = reference(hidden_states=x, timestep=per_frame.repeat_interleave(h * w, dim=1), **kwargs)[0]
    torch.testing.assert_close(framed(hidden_states=x, timestep=per_frame, **kwargs)[0], expected)
    # per-token and per-sample timesteps (what the pipelines pass) still run diffusers' own computation
    tokens = per_frame.repeat_interleave(h * w, dim=1)
    torch.testing.assert_close(framed(hidden_states=x, timestep=tokens, **kwargs)[0], expected)
    one = torch.tensor([500.0, 900.0])
    torch.testing.assert_close(framed(hidden_states=x, timestep=one, **kwargs)[0],
                               reference(hidden_states=x, timestep=one, **kwargs)[0])
    framed.enable_gradient_checkpointing()
    framed.train()
    framed(hidden_states=x.requires_grad_(), timestep=per_frame, **kwargs)[0].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_text_to_video_keeps_one_timestep_per_sample(tiny_versions: dict[str, Path]) -> None:
    family = _family(tiny_versions["0.9.5"])
    transformer = family.load_transformer(torch.float32)
    batch, spec = _batch(family, frames=9)
    seen: list[torch.Tensor] = []
    transformer.register_forward_pre_hook(lambda _, __, kwargs: seen.append(kwargs["timestep"]), with_kwargs=True)
    flow_matching_loss(family, transformer, batch, spec, build_config({}).diffusion, torch.Generator().manual_seed(0),
                       torch.float32, 0.0).backward()
    assert seen[0].shape == (2,)


def test_shifted_logit_normal_shifts_with_the_token_count() -> None:
    from ray_ltx.model.flow import sample_sigmas

    diffusion = build_config({"flow_weighting_scheme": "shifted_logit_normal"}).diffusion
    short = sample_sigmas(diffusion, 4096, torch.Generator().manual_seed(0), torch.device("cpu"), seq_len=1024)
    long = sample_sigmas(diffusion, 4096, torch.Generator().manual_seed(0), torch.device("cpu"), seq_len=4096)
    # median sigma = sigmoid(shift): 0.95 at 1024 tokens, 2.05 at 4096 (LTX-Video-Trainer's schedule)
    assert float(short.median()) == pytest.approx(1 / (1 + np.exp(-0.95)), abs=0.02)
    assert float(long.median()) == pytest.approx(1 / (1 + np.exp(-2.05)), abs=0.02)


# -- end to end, per version (slow) ------------------------------------------------------------------------------

PROMPT = "BW_STYLE A red circle moves from left to right across a plain black background."


def _frames(pipe, **kwargs) -> torch.Tensor:
    return pipe(prompt=PROMPT, num_frames=9, height=64, width=96, num_inference_steps=2, output_type="pt",
                generator=torch.Generator().manual_seed(0), decode_timestep=0.05, decode_noise_scale=0.025,
                **kwargs).frames


@pytest.mark.full
@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")
@pytest.mark.parametrize("version", list(VERSIONS))
def test_each_version_trains_image_to_video_resumes_exports_and_generates(
        tiny_versions: dict[str, Path], sample_data: Path, tmp_path: Path, version: str) -> None:
    from diffusers import LTXVideoTransformer3DModel

    from conftest import base_config
    from ray_ltx.generate import generate_video
    from ray_ltx.train.driver import train

    model = tiny_versions[version]
    image = tmp_path / "first_frame.png"
    Image.fromarray(np.full((80, 96, 3), (200, 30, 30), np.uint8)).save(image)  # 6:5, not the bucket's 2:3
    common = {"cache_dir": str(tmp_path / "cache"), "video_resolution_buckets": ["9x64x96"], "num_workers": 1,
              "first_frame_conditioning_p": 0.5, "checkpointing_steps": 2, "lr": 5e-3}
    lora_out = tmp_path / "lora"
    first = train(base_config(model, sample_data, lora_out, train_steps=2, **common))
    assert first.steps == 2
    # resume: a second run of the same output_dir continues at step 2, validating image-to-video at the end
    resumed = train(base_config(model, sample_data, lora_out, train_steps=3, resume_from_checkpoint="latest",
                                validation_prompts=[PROMPT], validation_images=[str(image)],
                                validation_num_frames=9, validation_height=64, validation_width=96,
                                validation_inference_steps=2, **common))
    assert resumed.steps == 3
    state = json.loads((Path(resumed.checkpoint) / "state.json").read_text())
    assert state["step"] == 3
    assert list((lora_out / "validation" / "step_000003").glob("*.mp4"))

    # the LoRA loads in diffusers' image-to-video pipeline of that version and changes its output
    family = _family(model)
    pipe = family.pipeline(torch.device("cpu"), torch.float32, image_to_video=True)
    picture = Image.open(image).convert("RGB").resize((96, 64))
    reference = _frames(pipe, image=picture)
    pipe.load_lora_weights(str(lora_out), adapter_name="i2v")
    assert not torch.allclose(_frames(pipe, image=picture), reference, atol=1e-4)
    video = generate_video(model=str(model), lora=str(lora_out), prompt=PROMPT, image=str(image), num_frames=9,
                           height=64, width=96, steps=2, out=str(tmp_path / "i2v.mp4"))
    assert video.stat().st_size > 0

    # a full finetune of the same version saves a transformer/ that loads with from_pretrained
    full = train(base_config(model, sample_data, tmp_path / "full", training_type="full-finetune", train_steps=1,
                             optimizer="adamw", **{**common, "lr": 1e-4}))
    finetuned = LTXVideoTransformer3DModel.from_pretrained(Path(full.output_dir) / "transformer")
    base = LTXVideoTransformer3DModel.from_pretrained(model, subfolder="transformer")
    assert finetuned.config.num_layers == base.config.num_layers
    assert any(not torch.equal(a, b) for a, b in zip(finetuned.parameters(), base.parameters(), strict=True))


@pytest.mark.full
@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")
def test_a_cache_of_another_version_is_refused_with_how_to_rebuild(tiny_versions: dict[str, Path], sample_data: Path,
                                                                    tmp_path: Path) -> None:
    from conftest import base_config
    from ray_ltx.data.pipeline import ensure_cache, preprocess

    cache = tmp_path / "cache"
    preprocess(base_config(tiny_versions["0.9.1"], sample_data, tmp_path / "a", cache_dir=str(cache),
                           video_resolution_buckets=["9x64x96"]))
    later = base_config(tiny_versions["0.9.7-13b"], None, tmp_path / "b", cache_dir=str(cache),
                        video_resolution_buckets=["9x64x96"])
    with pytest.raises(CacheError) as error:
        ensure_cache(later)
    message = str(error.value)
    assert "ltx_video 0.9.1" in message and "ltx_video 0.9.5+" in message and "--rebuild_cache" in message


def test_validation_images_are_checked_before_training(tiny_versions: dict[str, Path], tmp_path: Path, caplog) -> None:
    from ray_ltx.train import validation

    family = _family(tiny_versions["0.9.5"])
    good = tmp_path / "frame.png"
    Image.fromarray(np.zeros((100, 100, 3), np.uint8)).save(good)
    base = {"pretrained_model_name_or_path": str(tiny_versions["0.9.5"]), "validation_prompts": ["a", "b"],
            "validation_height": 64, "validation_width": 96}
    with pytest.raises(ConfigError, match="1 image\\(s\\) for 2 validation prompt"):
        validation.check(build_config({**base, "validation_images": [str(good)]}), family)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(ConfigError, match="broken.png: cannot be read as an image"):
        validation.check(build_config({**base, "validation_images": [str(good), str(broken)]}), family)
    with caplog.at_level("INFO"):
        validation.check(build_config({**base, "validation_images": [str(good), str(good)]}), family)
    assert "scaled to cover it and centre-cropped" in caplog.text  # 1:1 image, 3:2 video
