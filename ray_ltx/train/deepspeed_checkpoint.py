"""DeepSpeed checkpoints, read without running code.

DeepSpeed's checkpoint engine (``TorchCheckpointEngine``) reads a checkpoint's ``*_model_states.pt`` and
``*_optim_states.pt`` with torch's unrestricted unpickler (``weights_only=False``): a file planted where a run
resumes from could run any code. :func:`read_checkpoints_safely` gives a DeepSpeed engine a checkpoint engine that
writes exactly as DeepSpeed's does and reads with ``weights_only=True``, which allows tensors, numbers, strings and
containers, plus the few DeepSpeed classes of :data:`CHECKPOINT_CLASSES`. Anything else is refused, unexecuted,
with a :class:`~ray_ltx.errors.CheckpointError`.

``engine.checkpoint_engine`` is the only reader of the checkpoint files ``load_checkpoint`` uses with ray-ltx's
settings (the model-states file through DeepSpeed's state-dict loader, which takes the engine's checkpoint engine,
and each ZeRO partition's optimizer states); the ZeRO optimizers keep no reference to it. DeepSpeed's other
readers belong to features ray-ltx does not enable (universal checkpoints, NVMe offload, MoE experts, pipeline
layers).
"""

from __future__ import annotations

import pickle
import re
from typing import Any

import torch
from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine
from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
from deepspeed.runtime.zero.config import ZeroStageEnum
from deepspeed.utils.tensor_fragment import fragment_address

from ray_ltx.errors import CheckpointError

#: The classes a ZeRO-2 or ZeRO-3 checkpoint holds besides tensors and plain data (checked against saved
#: checkpoints in tests/test_deepspeed_safety.py). Each unpickles as a bare instance with its attributes set:
#: no constructor or other method of theirs runs.
CHECKPOINT_CLASSES: tuple[type, ...] = (
    ZeroStageEnum,  # optim states "zero_stage": which ZeRO stage wrote the partition
    LossScaler,  # optim states "loss_scaler" under fp32 and bf16 (a static scale of 1)
    DynamicLossScaler,  # the same under fp16
    fragment_address,  # ZeRO-2 optim states "param_slice_mappings": where each weight lies in the flat partition
)


class AllowListedCheckpointEngine(TorchCheckpointEngine):
    """DeepSpeed's torch checkpoint engine, reading with ``weights_only=True`` and :data:`CHECKPOINT_CLASSES`."""

    def __init__(self, replaces: TorchCheckpointEngine):
        # Not TorchCheckpointEngine.__init__ (which reads the DeepSpeed config again): the replaced engine's
        # settings are taken over as they are, so checkpoints are written exactly as before.
        vars(self).update(vars(replaces))

    def load(self, path: str, map_location: Any = None) -> Any:
        try:
            with torch.serialization.safe_globals(list(CHECKPOINT_CLASSES)):
                return torch.load(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as error:
            raise CheckpointError(_refusal(path, str(error))) from None
        except RuntimeError as error:  # a TorchScript archive or a legacy tar file, which torch refuses as well
            if "weights_only" not in str(error):
                raise
            raise CheckpointError(_refusal(path, str(error))) from None


def read_checkpoints_safely(engine: Any) -> None:
    """Make a DeepSpeed engine (what ``deepspeed.initialize`` returned) read its checkpoints through the allow-list.

    Call it right after ``deepspeed.initialize``, before any ``load_checkpoint``.
    """
    current = engine.checkpoint_engine
    if isinstance(current, AllowListedCheckpointEngine):
        return
    if type(current) is not TorchCheckpointEngine:
        raise RuntimeError(f"DeepSpeed chose the checkpoint engine {type(current).__name__}; ray-ltx reads "
                           "checkpoints safely only through TorchCheckpointEngine")
    engine.checkpoint_engine = AllowListedCheckpointEngine(current)


def _refusal(path: str, message: str) -> str:
    """The user's message for a file torch's restricted unpickler refused (never torch's advice to unpickle it)."""
    named = re.search(r"GLOBAL (\S+) was not an allowed global", message)
    if named:
        what = f"it names {named.group(1)}, which no DeepSpeed checkpoint of ray-ltx holds"
    elif "TorchScript" in message:
        what = "it is a TorchScript archive, not a checkpoint"
    elif "legacy .tar format" in message:
        what = "it is in torch's legacy tar format, which DeepSpeed does not write"
    else:
        detail = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", message)
        what = "it holds more than tensors, plain data and DeepSpeed's checkpoint classes" + (
            f" ({detail.group(1).strip()})" if detail else "")
    return (f"refusing to load the DeepSpeed checkpoint file {path}: {what}. This checkpoint may not come from this "
            "run (nothing in it was executed); resume only from checkpoints the run wrote itself, in folders no one "
            "else can write")
