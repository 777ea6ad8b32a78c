"""--backend fsdp (torch FSDP2) on Ray Train gloo workers: the same training as DDP, resumable at the same or
another number of workers, exports that load in diffusers, and the settings it refuses.

CPU runs compute in fp32 (the tiny model's bf16 on CPU is slow and would not compare with DDP to a tolerance);
the mixed-precision policy (bf16 params, fp32 reduce) is what GPU runs use.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import base_config
from ray_ltx.config import build_config
from ray_ltx.errors import ConfigError
from ray_ltx.train.driver import TrainResult, train

PROMPT = "BW_STYLE A red circle moves from left to right across a plain black background."
LORA_FILE = "pytorch_lora_weights.safetensors"
# One LoRA recipe for every run here: 2 micro-batches per step (the no-sync accumulation path), a checkpoint
# at step 2 to resume from, one held-out sample (the held-out loss runs on every FSDP rank), and clipping
# active at every step (so the global norm over the shards must be right).
LORA = {"train_steps": 4, "checkpointing_steps": 2, "gradient_accumulation_steps": 2, "lr": 5e-3,
        "holdout_samples": 1, "max_grad_norm": 1e-3}


@pytest.mark.parametrize(
    ("values", "names"),
    [
        ({"deepspeed_stage": 3}, ["--deepspeed_stage", "remove"]),
        ({"offload_optimizer": True}, ["--offload_optimizer", "--offload_params"]),
        ({"compile": True, "compile_mode": "reduce-overhead"}, ["reduce-overhead", "--compile_mode default"]),
        ({"optimizer": "adamw8bit"}, ["adamw8bit", "--optimizer adamw"]),
    ],
)
def test_fsdp_refuses_settings_it_cannot_honour(values: dict, names: list[str]) -> None:
    with pytest.raises(ConfigError) as error:
        build_config({"backend": "fsdp", **values})
    for name in names:
        assert name in str(error.value)


def test_fsdp_offload_flags() -> None:
    # FSDP2 offloads parameters, gradients and optimizer state together: --offload_params, optionally with
    # --offload_optimizer; the DeepSpeed-only meaning of --offload_params stays refused for ddp.
    assert build_config({"backend": "fsdp", "offload_params": True}).distributed.offload_params
    build_config({"backend": "fsdp", "offload_params": True, "offload_optimizer": True})
    with pytest.raises(ConfigError, match="--offload_params needs"):
        build_config({"backend": "ddp", "offload_params": True})


class _RunsCode:
    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_checkpoint_metadata_that_would_run_code_is_refused(tmp_path: Path) -> None:
    import pickle

    from ray_ltx.errors import CheckpointError
    from ray_ltx.train.fsdp import SHARDS_DIR, _MetadataReader

    shards = tmp_path / SHARDS_DIR
    shards.mkdir()
    payload = _RunsCode()
    payload.marker = str(tmp_path / "code-ran")
    (shards / ".metadata").write_bytes(pickle.dumps(payload))
    with pytest.raises(CheckpointError, match="refusing"):
        _MetadataReader(shards).read_metadata()
    assert not (tmp_path / "code-ran").exists()


@pytest.fixture(scope="module")
def lora_runs(tiny_model: Path, sample_data: Path, shared_cache: Path, tmp_path_factory: pytest.TempPathFactory,
              ray_cluster) -> dict[str, TrainResult]:
    """The same LoRA training under DDP and FSDP (with gradient checkpointing and validation), 2 workers."""
    root = tmp_path_factory.mktemp("fsdp-lora")
    runs = {}
    for backend, extra in (("ddp", {}), ("fsdp", {
            "gradient_checkpointing": True, "validation_prompts": [PROMPT], "validation_height": 64,
            "validation_width": 96, "validation_num_frames": 9, "validation_inference_steps": 2})):
        config = base_config(tiny_model, sample_data, root / backend, cache_dir=str(shared_cache), backend=backend,
                             **LORA, **extra)
        runs[backend] = train(config, quiet=True)
    return runs


def _checkpoint(result: TrainResult, step: int) -> str:
    return str(Path(result.output_dir) / "ray" / "train" / f"checkpoint_{step:08d}")


def _lora(result: TrainResult) -> dict[str, torch.Tensor]:
    return load_file(Path(result.output_dir) / LORA_FILE)


def _assert_same_weights(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert sorted(actual) == sorted(expected)
    for name, tensor in expected.items():
        torch.testing.assert_close(actual[name], tensor, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.slow
def test_fsdp_lora_trains_like_ddp_and_exports_for_diffusers(lora_runs, tiny_model: Path) -> None:
    from diffusers import LTXPipeline

    ddp, fsdp = lora_runs["ddp"], lora_runs["fsdp"]
    assert fsdp.steps == ddp.steps == 4
    # The loss of the last step depends on every update before it: same data, same noise, same gradients.
    assert fsdp.final_loss == pytest.approx(ddp.final_loss, rel=1e-4)
    _assert_same_weights(_lora(fsdp), _lora(ddp))
    assert (Path(fsdp.output_dir) / "validation" / "step_000004" / "prompt_00.mp4").is_file()

    pipe = LTXPipeline.from_pretrained(tiny_model)
    pipe.load_lora_weights(fsdp.output_dir, adapter_name="fsdp")
    loaded = {name.replace(".fsdp.", "."): p.detach()
              for name, p in pipe.transformer.named_parameters() if ".fsdp." in name}
    exported = {name.removeprefix("transformer."): tensor for name, tensor in _lora(fsdp).items()}
    _assert_same_weights(loaded, exported)


@pytest.mark.full
@pytest.mark.slow
def test_fsdp_resume_continues_like_an_uninterrupted_run(lora_runs, make_config) -> None:
    uninterrupted = lora_runs["fsdp"]
    resumed = train(make_config(backend="fsdp", gradient_checkpointing=True, **LORA,
                                resume_from_checkpoint=_checkpoint(uninterrupted, 2)), quiet=True)
    assert resumed.steps == 4
    # Steps 3-4 from restored weights, Adam moments and LR schedule give the uninterrupted run's result.
    assert resumed.final_loss == pytest.approx(uninterrupted.final_loss, rel=1e-5)
    _assert_same_weights(_lora(resumed), _lora(uninterrupted))


@pytest.mark.full
@pytest.mark.slow
def test_fsdp_checkpoint_of_two_workers_resumes_on_one(lora_runs, tiny_model: Path, sample_data: Path,
                                                       shared_cache: Path, tmp_path: Path) -> None:
    # One worker sees other micro-batches than two, so the reference is DDP resumed on one worker from its own
    # checkpoint of the same step (DDP and FSDP agree at two workers, see above).
    one = {}
    for backend in ("ddp", "fsdp"):
        config = base_config(tiny_model, sample_data, tmp_path / backend, cache_dir=str(shared_cache), backend=backend,
                             num_workers=1, resume_from_checkpoint=_checkpoint(lora_runs[backend], 2), **LORA)
        one[backend] = train(config, quiet=True)
    assert one["fsdp"].steps == 4
    assert one["fsdp"].final_loss == pytest.approx(one["ddp"].final_loss, rel=1e-4)
    _assert_same_weights(_lora(one["fsdp"]), _lora(one["ddp"]))


@pytest.mark.full
@pytest.mark.slow
def test_fsdp_full_finetune_trains_like_ddp_and_loads_with_from_pretrained(tiny_model: Path, sample_data: Path,
                                                                           shared_cache: Path, tmp_path: Path) -> None:
    from diffusers import LTXVideoTransformer3DModel

    weights = {}
    for backend in ("ddp", "fsdp"):
        config = base_config(tiny_model, sample_data, tmp_path / backend, cache_dir=str(shared_cache), backend=backend,
                             training_type="full-finetune", train_steps=2, checkpointing_steps=2, lr=5e-4,
                             max_grad_norm=1e-3, gradient_checkpointing=backend == "fsdp")
        result = train(config, quiet=True)
        weights[backend] = LTXVideoTransformer3DModel.from_pretrained(Path(result.output_dir) / "transformer").state_dict()
    _assert_same_weights(weights["fsdp"], weights["ddp"])
    base = LTXVideoTransformer3DModel.from_pretrained(tiny_model, subfolder="transformer").state_dict()
    assert not torch.allclose(weights["fsdp"]["proj_in.weight"], base["proj_in.weight"])  # the root unit trained too


def _train_alone(backend: str, gradient_checkpointing: bool, steps: int = 3):
    """A tiny full finetune on one worker, stepped as the loop steps it; returns the engine."""
    from ray_ltx.model.family import Batch, LatentSpec
    from ray_ltx.model.flow import flow_matching_loss
    from ray_ltx.model.ltx_video import LTXVideoFamily
    from ray_ltx.model.tiny import build_transformer
    from ray_ltx.train.engine import build_engine
    from ray_ltx.train.loop import prepare_transformer

    config = build_config({"pretrained_model_name_or_path": "built-in-the-test", "training_type": "full-finetune",
                           "backend": backend, "transformer_dtype": "fp32", "gradient_checkpointing": gradient_checkpointing,
                           "lr": 1e-3, "max_grad_norm": 1e-2, "optimizer": "adamw_fused", "train_steps": 10})
    family = LTXVideoFamily(config)
    family.load_transformer = lambda dtype, device="cpu": build_transformer("tiny", dtype, device, seed=0)
    device = torch.device("cpu")
    model, _ = prepare_transformer(config, family, device)
    engine = build_engine(model, config, device, 1)
    spec = LatentSpec(latent_channels=8, spatial_compression=32, temporal_compression=8, scaling_factor=1.0,
                      latents_mean=(0.0,) * 8, latents_std=(1.0,) * 8)
    data = torch.Generator().manual_seed(0)
    mask = torch.zeros((1, 16), dtype=torch.bool)
    mask[:, :5] = True
    batch = Batch(torch.randn((1, 8, 2, 2, 3), generator=data), torch.randn((1, 16, 32), generator=data), mask)
    for step in range(steps):
        with engine.accumulating(True):
            loss = flow_matching_loss(family, engine.module, batch, spec, config.diffusion,
                                      torch.Generator().manual_seed(step), torch.float32)
            engine.backward(loss)
        engine.step()
    return engine


@pytest.mark.parametrize("gradient_checkpointing", [False, True])
def test_one_worker_fsdp_steps_like_the_unsharded_path(one_process_group, gradient_checkpointing: bool) -> None:
    # One worker: no resharding after the forward, the optimizer stepping the local shards (from the second step on)
    # -- the same updates as the unsharded path, clipping included.
    fsdp = _train_alone("fsdp", gradient_checkpointing)
    assert not fsdp.options.reshard_after_forward and fsdp.options.reduce_dtype == torch.float32
    _assert_same_weights(fsdp.full_state_dict(), _train_alone("ddp", gradient_checkpointing).full_state_dict())


def test_fsdp_options_keep_what_sharding_needs() -> None:
    from ray_ltx.train.fsdp import FSDPOptions

    alone = FSDPOptions.for_run(build_config({"backend": "fsdp"}), 1)
    assert not alone.reshard_after_forward and alone.reduce_dtype == torch.float32
    # Gradients are summed in fp32 however many micro-batches or workers; more workers reshard to save memory.
    accumulating = FSDPOptions.for_run(build_config({"backend": "fsdp", "gradient_accumulation_steps": 2}), 1)
    assert accumulating.reduce_dtype == torch.float32
    shrunk = FSDPOptions.for_run(build_config({"backend": "fsdp", "num_workers": "1:2"}), 1)
    assert shrunk.reduce_dtype == torch.float32
    two = FSDPOptions.for_run(build_config({"backend": "fsdp", "num_workers": 2}), 2)
    assert two.reshard_after_forward and two.reduce_dtype == torch.float32
    # Offloaded to the CPU, a gathered block on the GPU is what the offload exists to avoid keeping.
    offloaded = FSDPOptions.for_run(build_config({"backend": "fsdp", "offload_params": True}), 1)
    assert offloaded.reshard_after_forward
