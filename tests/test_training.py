"""Training on Ray Train with 2 gloo workers, the tiny model and the real cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import LTXPipeline, LTXVideoTransformer3DModel
from mlflow.tracking import MlflowClient

from ray_ltx.data.cache import LatentCache, row_to_tensors
from ray_ltx.model.family import Batch, LatentSpec, family_for
from ray_ltx.model.flow import heldout_loss
from ray_ltx.train.driver import train

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_cluster")]

PROMPT = "BW_STYLE A red circle moves from left to right across a plain black background."


def _sample_loss(transformer, cache_dir: Path, model: Path) -> float:
    """The held-out loss (fixed sigmas and noise) on the first training sample: deterministic for given weights."""
    cache = LatentCache.open(str(cache_dir))
    sample = row_to_tensors(cache.read([cache.sample_ids("17x64x96")[0]])[0])
    batch = Batch(sample["latents"][None], sample["prompt_embeds"][None], sample["prompt_attention_mask"][None])
    spec = LatentSpec.from_dict(cache.manifest.latent_spec)
    from ray_ltx.config import build_config

    family = family_for(build_config({"pretrained_model_name_or_path": str(model)}))
    return heldout_loss(family, transformer.eval(), batch, spec, 25.0, seed=0, compute_dtype=torch.float32)


def _frames(pipe) -> torch.Tensor:
    out = pipe(PROMPT, num_frames=9, height=64, width=96, num_inference_steps=2,
               generator=torch.Generator().manual_seed(0), output_type="pt").frames
    return out


def _metric_steps(uri: str, run_id: str, key: str = "loss") -> list[int]:
    return [m.step for m in MlflowClient(uri).get_metric_history(run_id, key)]


def test_lora_learns_exports_and_loads_in_diffusers(make_config, tiny_model: Path, shared_cache: Path,
                                                    tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    config = make_config(train_steps=8, lr=5e-3, checkpointing_steps=2, checkpointing_limit=1,
                         report_to="mlflow", mlflow_tracking_uri=uri)
    result = train(config)
    out = Path(result.output_dir)
    assert result.steps == 8
    # checkpoint limit honoured: only the newest checkpoint is kept
    assert [p.name for p in (out / "ray" / "train").glob("checkpoint_*") if p.is_dir()] == ["checkpoint_00000008"]
    block = json.loads((out / "training_config.json").read_text())
    assert block["train steps"] == 8 and block["trainable parameters"] > 0 and block["total samples"] == 6
    assert block["train batch size"] == 2  # 1 per device x 2 workers
    assert sorted(_metric_steps(uri, result.mlflow_run_id)) == list(range(1, 9))

    base = LTXVideoTransformer3DModel.from_pretrained(tiny_model, subfolder="transformer")
    before = _sample_loss(base, shared_cache, tiny_model)
    pipe = LTXPipeline.from_pretrained(tiny_model)
    reference = _frames(pipe)
    # The seed's inference snippet, with the tiny model in place of the hub id.
    pipe.load_lora_weights(str(out), adapter_name="ltxv-lora")
    pipe.set_adapters(["ltxv-lora"], [0.75])
    assert not torch.allclose(_frames(pipe), reference, atol=1e-4)
    pipe.set_adapters(["ltxv-lora"], [1.0])
    after = _sample_loss(pipe.transformer, shared_cache, tiny_model)
    assert after < before, (before, after)


def test_full_finetune_learns_and_loads_with_from_pretrained(make_config, tiny_model: Path, shared_cache: Path) -> None:
    result = train(make_config(training_type="full-finetune", train_steps=6, lr=5e-4, checkpointing_steps=3, optimizer="adamw"))
    finetuned = LTXVideoTransformer3DModel.from_pretrained(Path(result.output_dir) / "transformer")
    base = LTXVideoTransformer3DModel.from_pretrained(tiny_model, subfolder="transformer")
    assert _sample_loss(finetuned, shared_cache, tiny_model) < _sample_loss(base, shared_cache, tiny_model)


@pytest.mark.parametrize("stage,training_type", [pytest.param(2, "lora", marks=pytest.mark.full), (3, "full-finetune")])
def test_deepspeed_zero(stage: int, training_type: str, make_config, tiny_model: Path) -> None:
    result = train(make_config(backend="deepspeed", deepspeed_stage=stage, training_type=training_type,
                               train_steps=4, checkpointing_steps=2))
    out = Path(result.output_dir)
    assert result.steps == 4
    assert (out / "ray" / "train" / "checkpoint_00000002").is_dir()
    if training_type == "lora":
        pipe = LTXPipeline.from_pretrained(tiny_model)
        pipe.load_lora_weights(str(out))
    else:
        LTXVideoTransformer3DModel.from_pretrained(out / "transformer")


@pytest.mark.full
def test_worker_failure_restarts_from_the_last_checkpoint(make_config, tmp_path: Path, monkeypatch) -> None:
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    monkeypatch.setenv("RAY_LTX_FAULT", "raise@3:1")  # rank 1 raises in its 4th step
    result = train(make_config(train_steps=6, checkpointing_steps=2, max_failures=1, report_to="mlflow",
                               mlflow_tracking_uri=uri))
    assert result.steps == 6
    assert (Path(result.output_dir) / "ray" / "train" / ".fault-raise-3-1.fired").is_file()
    assert len(result.workers["restarts"]) == 1  # the fault fired and the group restarted once
    # one value per step: the steps replayed after the restart from checkpoint 2 are not logged twice
    assert sorted(_metric_steps(uri, result.mlflow_run_id)) == list(range(1, 7))


def test_stopped_run_resumes_at_the_right_step_in_the_same_mlflow_run(make_config, tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    first = train(make_config(train_steps=4, checkpointing_steps=2, report_to="mlflow", mlflow_tracking_uri=uri,
                              num_workers=1))
    second = train(make_config(train_steps=6, checkpointing_steps=2, resume_from_checkpoint="latest",
                               report_to="mlflow", mlflow_tracking_uri=uri, num_workers=1))
    assert first.steps == 4 and second.steps == 6
    # --resume_from_checkpoint latest continues the run: one run id, one loss curve without gaps or repeats
    assert second.mlflow_run_id == first.mlflow_run_id
    assert _metric_steps(uri, second.mlflow_run_id) == [1, 2, 3, 4, 5, 6]
    run = MlflowClient(uri).get_run(second.mlflow_run_id)
    assert run.info.status == "FINISHED" and run.data.params["training.train_steps"] == "4"
    assert run.data.tags["resumed.training.train_steps"] == "6"
    state = json.loads((Path(second.checkpoint) / "state.json").read_text())
    assert state["step"] == 6


def test_weighting_schemes_and_schedules() -> None:
    from ray_ltx.config import build_config
    from ray_ltx.model.flow import loss_weights, sample_sigmas
    from ray_ltx.train.optim import build_optimizer, build_scheduler

    generator = torch.Generator().manual_seed(0)
    for scheme in ("none", "sigma_sqrt", "logit_normal", "mode", "cosmap"):
        diffusion = build_config({"flow_weighting_scheme": scheme}).diffusion
        sigmas = sample_sigmas(diffusion, 512, generator, torch.device("cpu"))
        assert sigmas.min() > 0 and sigmas.max() <= 1
        weights = loss_weights(scheme, sigmas)
        assert torch.isfinite(weights).all() and weights.shape == sigmas.shape
    logit = sample_sigmas(build_config({"flow_weighting_scheme": "logit_normal"}).diffusion, 4096, generator,
                          torch.device("cpu"))
    assert abs(float(logit.median()) - 0.5) < 0.05  # logit-normal(0, 1) is centred on 0.5
    expected_end = {"constant": 1.0, "constant_with_warmup": 1.0, "linear": 0.0, "cosine": 0.0,
                    "cosine_with_restarts": 0.0, "polynomial": 0.0}
    for name, end in expected_end.items():
        config = build_config({"lr_scheduler": name, "lr_warmup_steps": 2, "train_steps": 10, "lr": 1.0,
                               "lr_num_cycles": 2})
        param = torch.nn.Parameter(torch.zeros(1))
        optimizer = build_optimizer([param], config, torch.device("cpu"))
        scheduler = build_scheduler(optimizer, config)
        lrs = []
        for _ in range(10):
            lrs.append(scheduler.get_last_lr()[0])
            optimizer.step()
            scheduler.step()
        assert lrs[0] == (1.0 if name == "constant" else 0.0)  # warmup starts at 0
        assert abs(lrs[2] - 1.0) < 1e-6  # and reaches the peak after lr_warmup_steps
        assert abs(scheduler.get_last_lr()[0] - end) < 1e-6, (name, lrs)
