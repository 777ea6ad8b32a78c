"""DeepSpeed checkpoints resume through an allow-list: a planted checkpoint cannot run code.

The fast tests drive ray-ltx's ``DeepSpeedEngine`` in this process (world size 1, gloo on the CPU) with a small
module; the slow one resumes a real ZeRO-2 run under Ray.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from ray_ltx.errors import CheckpointError

TAG = "zero"


class _Small(nn.Module):
    """A frozen layer (as LoRA's base weights are), a trained one and a buffer."""

    def __init__(self, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.frozen = nn.Linear(8, 16)
        self.frozen.requires_grad_(False)
        self.trained = nn.Linear(16, 4)
        self.register_buffer("scale", torch.full((4,), 0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.trained(torch.relu(self.frozen(x))) * self.scale


class _RunsCode:
    """Unpickling this touches ``marker``: the stand-in for a payload planted in a checkpoint."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


@pytest.fixture
def process_group(one_process_group: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """A one-process gloo group and the variables a Ray Train worker of a single-worker run has (DeepSpeed reads
    LOCAL_RANK); set for each test only, so that a Ray started later in the session does not inherit them."""
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(one_process_group), "RANK": "0", "LOCAL_RANK": "0",
           "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)


def _engine(stage: int, seed: int, dtype: str = "fp32", **extra):
    from ray_ltx.config import build_config
    from ray_ltx.train.engine import DeepSpeedEngine

    config = build_config({"backend": "deepspeed", "deepspeed_stage": stage, "transformer_dtype": dtype, "lr": 1e-2,
                           "lr_scheduler": "linear", "lr_warmup_steps": 1, "train_steps": 10, "num_workers": 1,
                           **extra})
    return DeepSpeedEngine(_Small(seed), config, torch.device("cpu"), world_size=1)


def _train(engine, steps: int) -> None:
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(2, 8, generator=generator)
        param = next(engine.module.parameters())
        loss = engine.module(x.to(param.dtype)).float().pow(2).mean()
        engine.backward(loss)


def _optimizer_state(engine) -> dict[int, dict[str, torch.Tensor]]:
    """The torch optimizer's state of this rank's ZeRO partition (step, exp_avg, exp_avg_sq), as a checkpoint has it."""
    state = engine.optimizer.state_dict()
    base = state.get("base_optimizer_state", state.get("optimizer_state_dict"))  # ZeRO-2, ZeRO-3
    return copy.deepcopy(base["state"])


def _checkpoint_files(directory: Path) -> list[Path]:
    files = sorted((directory / TAG).glob("*.pt"))
    assert any(f.name.endswith("model_states.pt") for f in files), files
    assert any(f.name.endswith("optim_states.pt") for f in files), files
    return files


def _plant(path: Path, payload: _RunsCode) -> None:
    """The checkpoint's own content plus a payload, written as DeepSpeed writes (torch.save)."""
    from ray_ltx.train.deepspeed_checkpoint import CHECKPOINT_CLASSES

    with torch.serialization.safe_globals(list(CHECKPOINT_CLASSES)):
        state = torch.load(path, weights_only=True)
    state["extra"] = payload
    torch.save(state, path)


@pytest.mark.parametrize("stage,dtype", [(2, "fp32"), (3, "fp32"), (2, "bf16"), (3, "bf16")])
def test_deepspeed_checkpoint_round_trips_through_the_allow_list(process_group, stage: int, dtype: str,
                                                                 tmp_path: Path) -> None:
    from ray_ltx.train.deepspeed_checkpoint import CHECKPOINT_CLASSES, AllowListedCheckpointEngine

    trained = _engine(stage, seed=0, dtype=dtype)
    assert isinstance(trained.engine.checkpoint_engine, AllowListedCheckpointEngine)
    _train(trained, steps=3)
    trained.save(tmp_path, rank=0)
    weights, optimizer, lr = trained.full_state_dict(), _optimizer_state(trained), trained.lr
    assert optimizer and all("exp_avg" in s for s in optimizer.values())

    # What the files hold besides tensors and plain data is on the allow-list: a DeepSpeed upgrade that saves
    # another class fails here first, with its name.
    allowed = {f"{cls.__module__}.{cls.__qualname__}" for cls in CHECKPOINT_CLASSES}
    for path in _checkpoint_files(tmp_path):
        assert set(torch.serialization.get_unsafe_globals_in_checkpoint(path)) <= allowed, path

    resumed = _engine(stage, seed=1, dtype=dtype)  # other initial weights: the load must replace them
    assert resumed.full_state_dict()["trained.weight"].ne(weights["trained.weight"]).any()
    resumed.load(tmp_path)
    loaded = resumed.full_state_dict()
    assert sorted(loaded) == sorted(weights) == ["trained.bias", "trained.weight"]
    for name, tensor in weights.items():
        torch.testing.assert_close(loaded[name], tensor, rtol=0, atol=0)
    loaded_optimizer = _optimizer_state(resumed)
    assert sorted(loaded_optimizer) == sorted(optimizer)
    for index, state in optimizer.items():
        assert sorted(loaded_optimizer[index]) == sorted(state)
        for key, value in state.items():
            torch.testing.assert_close(loaded_optimizer[index][key], value, rtol=0, atol=0)
    assert resumed.lr == lr and resumed.engine.global_steps == trained.engine.global_steps == 3

    # Both go on identically from the checkpoint.
    _train(trained, steps=1)
    _train(resumed, steps=1)
    after, resumed_after = trained.full_state_dict(), resumed.full_state_dict()
    for name, tensor in after.items():
        torch.testing.assert_close(resumed_after[name], tensor, rtol=0, atol=0)


def test_fp16_loss_scaler_state_loads(tmp_path: Path) -> None:
    """fp16 (which DeepSpeed refuses on the CPU) saves the dynamic loss scaler DeepSpeed builds for it."""
    from deepspeed.runtime.fp16.loss_scaler import CreateLossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum

    from ray_ltx.train.deepspeed_checkpoint import AllowListedCheckpointEngine, TorchCheckpointEngine

    scaler = CreateLossScaler(torch.half, static_loss_scale=0, dynamic_scaling=True, dynamic_loss_args={
        "init_scale": 2.0**16, "scale_window": 1000, "min_scale": 1.0, "delayed_shift": 2,
        "consecutive_hysteresis": False})
    scaler.cur_scale, scaler.cur_iter = 2.0**15, 7  # as after an overflow
    path = tmp_path / "optim_states.pt"
    torch.save({"optimizer_state_dict": {"loss_scaler": scaler, "zero_stage": ZeroStageEnum.gradients}}, path)
    loaded = AllowListedCheckpointEngine(TorchCheckpointEngine()).load(str(path))["optimizer_state_dict"]
    assert type(loaded["loss_scaler"]) is type(scaler) and vars(loaded["loss_scaler"]) == vars(scaler)
    assert loaded["loss_scaler"].dtype == torch.half and loaded["loss_scaler"].dynamic
    assert (loaded["loss_scaler"].cur_scale, loaded["loss_scaler"].cur_iter) == (2.0**15, 7)
    assert loaded["zero_stage"] is ZeroStageEnum.gradients


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_checkpoint_that_would_run_code_is_refused(process_group, stage: int, tmp_path: Path) -> None:
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    saved = tmp_path / "saved"
    trained = _engine(stage, seed=0)
    _train(trained, steps=1)
    trained.save(saved, rank=0)
    resumed = _engine(stage, seed=1)
    marker = tmp_path / "code-ran"
    for index, name in enumerate(p.name for p in _checkpoint_files(saved)):
        planted = shutil.copytree(saved, tmp_path / f"planted-{index}")
        _plant(planted / TAG / name, _RunsCode(marker))
        # The payload works: DeepSpeed's own reader runs it.
        TorchCheckpointEngine().load(str(planted / TAG / name), map_location="cpu")
        assert marker.exists()
        marker.unlink()

        with pytest.raises(CheckpointError, match="refusing") as refused:
            resumed.load(planted)
        message = str(refused.value)
        assert name in message and "it names getattr" in message and "may not come from this run" in message
        assert "weights_only=False" not in message  # never torch's advice to load it unrestricted
        assert not marker.exists()


@pytest.mark.slow
@pytest.mark.full
@pytest.mark.usefixtures("ray_cluster")
def test_deepspeed_run_resumes(make_config, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    from ray_ltx.train.driver import train

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    common = {"backend": "deepspeed", "deepspeed_stage": 2, "num_workers": 1, "checkpointing_steps": 2,
              "report_to": "mlflow", "mlflow_tracking_uri": uri}
    first = train(make_config(train_steps=4, **common))
    second = train(make_config(train_steps=6, resume_from_checkpoint="latest", **common))
    assert first.steps == 4 and second.steps == 6
    # It continued from step 4's ZeRO-2 checkpoint: one run, one loss curve without gaps or repeats
    assert second.mlflow_run_id == first.mlflow_run_id
    assert [m.step for m in MlflowClient(uri).get_metric_history(second.mlflow_run_id, "loss")] == [1, 2, 3, 4, 5, 6]
    state = json.loads((Path(second.checkpoint) / "state.json").read_text())
    assert state["step"] == 6


@pytest.mark.parametrize("stage", [2, 3])
def test_optimizer_offload_trains_and_resumes(process_group, stage: int, tmp_path: Path) -> None:
    """--offload_optimizer: ZeRO-Offload with ray-ltx's own optimizer (DeepSpeed would insist on its CPU Adam)."""
    trained = _engine(stage, seed=0, offload_optimizer=True)
    before = trained.full_state_dict()["trained.weight"].clone()
    _train(trained, steps=2)
    assert trained.full_state_dict()["trained.weight"].ne(before).any()
    trained.save(tmp_path, rank=0)
    resumed = _engine(stage, seed=1, offload_optimizer=True)
    resumed.load(tmp_path)
    torch.testing.assert_close(resumed.full_state_dict()["trained.weight"], trained.full_state_dict()["trained.weight"],
                               rtol=0, atol=0)
