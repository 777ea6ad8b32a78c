"""``ray-ltx export``: the weights of a run or of any of its checkpoints, in the formats users load.

A source is a checkpoint directory (``<storage>/<run>/checkpoint_<step>``), a run's output_dir (its final
weights, or with ``--step`` one of its checkpoints), or an MLflow URI (``runs:/<id>/weights``,
``models:/<name>/<version>``). A LoRA comes out as diffusers' ``pytorch_lora_weights.safetensors`` plus the
ComfyUI copy; a full finetune as a diffusers ``transformer/`` folder (from a checkpoint: DDP or FSDP ones,
given the base model to fill in the architecture).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from ray_ltx.errors import CheckpointError, ConfigError
from ray_ltx.model.lora import COMFYUI_WEIGHTS, DIFFUSERS_WEIGHTS, export_comfyui
from ray_ltx.train import checkpoint as ckpt

log = logging.getLogger(__name__)

def _local(source: str) -> Path:
    if source.startswith(("runs:/", "models:/", "mlflow-artifacts:/")):
        import mlflow

        return Path(mlflow.artifacts.download_artifacts(artifact_uri=source))
    path = Path(source).expanduser()
    if not path.exists():
        raise ConfigError(f"ray-ltx export {source}: no such file or directory (give a checkpoint directory, a run's "
                          "output_dir, or runs:/<run_id>/weights)")
    return path


def _checkpoints(output_dir: Path) -> list[Path]:
    return sorted(p for p in output_dir.glob("ray/*/checkpoint_*") if p.is_dir())


def find_weights(source: Path, step: int | None = None) -> Path:
    """The directory holding the weights to export: a LoRA dir, a transformer/ parent, or a checkpoint."""
    if step is not None:
        matches = [p for p in _checkpoints(source) if p.name == f"checkpoint_{step:08d}"]
        if not matches:
            steps = ", ".join(str(int(p.name.removeprefix("checkpoint_"))) for p in _checkpoints(source)) or "none"
            raise CheckpointError(f"{source} has no checkpoint of step {step} (checkpoints kept: {steps})")
        source = matches[0]
    if source.is_file() and source.suffix == ".safetensors":
        return source.parent
    for candidate in (source, source / ckpt.LORA_DIR, source / ckpt.EXPORT_DIR):
        if (candidate / DIFFUSERS_WEIGHTS).is_file() or (candidate / "transformer").is_dir():
            return candidate
    if (source / ckpt.STATE).is_file():
        return source  # a full-finetune checkpoint: weights in the engine's own format
    raise CheckpointError(f"{source}: no LoRA ({DIFFUSERS_WEIGHTS}), transformer/ or ray-ltx checkpoint found; give "
                          "a run's output_dir (with --step for a checkpoint) or a checkpoint_<step> directory")


def export(source: str, out: str | Path, step: int | None = None, model: str | None = None) -> Path:
    """Write the weights of ``source`` to ``out``; returns ``out``."""
    found = find_weights(_local(source), step)
    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    if (found / DIFFUSERS_WEIGHTS).is_file():
        shutil.copy2(found / DIFFUSERS_WEIGHTS, out / DIFFUSERS_WEIGHTS)
        export_comfyui(out, out / COMFYUI_WEIGHTS)
        log.info("LoRA of %s -> %s (%s, %s)", found, out, DIFFUSERS_WEIGHTS, COMFYUI_WEIGHTS)
        return out
    if (found / "transformer").is_dir():
        shutil.copytree(found / "transformer", out / "transformer", dirs_exist_ok=True)
        return out
    _export_full_checkpoint(found, out, model)
    return out


def _export_full_checkpoint(directory: Path, out: Path, model: str | None) -> None:
    """A full-finetune checkpoint (DDP: trainable.safetensors) -> transformer/, on the base model's architecture."""
    import torch
    from safetensors.torch import load_file

    from ray_ltx.config import build_config
    from ray_ltx.model.family import family_for

    state = ckpt.verify(directory)
    if state.training_type != "full-finetune":
        raise CheckpointError(f"{directory}: a LoRA checkpoint without its lora/ folder (written before ray-ltx "
                              "exported LoRAs at every checkpoint); resume the run to write a newer checkpoint")
    weights_file = directory / "trainable.safetensors"
    if not weights_file.is_file():
        raise CheckpointError(f"{directory}: a {state.backend} checkpoint; ray-ltx exports full-finetune weights "
                              "from ddp checkpoints and from every run's final output (transformer/). Resume the run "
                              "with --train_steps at this step to get its transformer/")
    if not model:
        raise ConfigError("exporting a full-finetune checkpoint needs --model: the base model it was trained from")
    family = family_for(build_config({"pretrained_model_name_or_path": model}).resolved())
    transformer = family.load_transformer(torch.float32, "cpu")
    missing, unexpected = transformer.load_state_dict(load_file(weights_file), strict=False)
    if unexpected:
        raise CheckpointError(f"{directory} does not fit the transformer of {model}: unexpected {unexpected[:3]}")
    transformer.save_pretrained(out / "transformer", safe_serialization=True)
