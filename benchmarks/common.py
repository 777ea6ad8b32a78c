"""Helpers shared by the GPU benchmarks: run metadata, random-weight model directories, result files."""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

#: bf16 dense matrix-multiply peaks used for MFU: the H100 SXM datasheet figure, and what an
#: 8192^3 bf16 matmul reached on the lent H100/H200 machines (/work/shared/FACTS.md, KINDS.md).
PEAK_BF16_DATASHEET_TFLOPS = 989.0
PEAK_BF16_MEASURED_TFLOPS = 790.0


def git_commit() -> str:
    """HEAD of the checkout (the device machine gets a copy without .git: pass RAY_LTX_GIT_COMMIT)."""
    if os.environ.get("RAY_LTX_GIT_COMMIT"):
        return os.environ["RAY_LTX_GIT_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def environment() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "host_cpus": os.cpu_count(),
    }
    for name in ("diffusers", "transformers", "peft", "ray", "mlflow"):
        try:
            module = __import__(name)
            info[name] = getattr(module, "__version__", "?")
        except Exception:  # noqa: BLE001 - optional packages
            info[name] = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        info["gpu_sms"] = props.multi_processor_count
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20)
            info["driver"] = smi.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    else:
        info["gpu"] = None
    return info


def write_json(path: str | Path, data: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str) + "\n")
    tmp.replace(path)


def write_model_configs(model_dir: Path, size: str, version: str = "0.9.0") -> None:
    """vae/config.json and text_encoder/config.json without weights: enough for ray-ltx's cache fingerprint.

    Built on the meta device, so a T5-XXL-shaped config costs no memory and no time.
    """
    from ray_ltx.model.tiny import build_text_encoder, build_vae

    vae = build_vae(size, device="meta", version=version)
    vae.save_config(str(model_dir / "vae"))
    encoder = build_text_encoder(size, device="meta")
    encoder.config.save_pretrained(str(model_dir / "text_encoder"))


def latent_spec(size: str) -> dict[str, Any]:
    """The LatentSpec of the random VAE (diffusers initialises latents_mean to 0 and latents_std to 1)."""
    from ray_ltx.model.tiny import build_vae

    vae = build_vae(size, device="meta")
    channels = int(vae.config.latent_channels)
    return {
        "latent_channels": channels,
        "spatial_compression": int(vae.spatial_compression_ratio),
        "temporal_compression": int(vae.temporal_compression_ratio),
        "scaling_factor": float(vae.config.scaling_factor),
        "latents_mean": [0.0] * channels,
        "latents_std": [1.0] * channels,
        "patch_size": 1,
        "patch_size_t": 1,
    }


class Deadline:
    """The time left in one device call, so a long benchmark skips what would not finish."""

    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()
