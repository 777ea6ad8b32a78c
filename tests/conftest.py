"""Session-wide fixtures: the tiny model, sample videos, one local Ray cluster, a helper to train.

Expensive things are built once per session. Every test that trains uses the real stack: Ray
Data, Ray Train workers on gloo, real DeepSpeed, a real MLflow store.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("RAY_DEDUP_LOGS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

BUCKETS = ["9x64x96", "17x64x96"]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from ray_ltx.model.tiny import write_pipeline

    return write_pipeline(tmp_path_factory.mktemp("model") / "tiny-ltx-video")


@pytest.fixture(scope="session")
def sample_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from ray_ltx.data.samples import write_sample_dataset

    return write_sample_dataset(tmp_path_factory.mktemp("data") / "samples", num_clips=6)


@pytest.fixture(scope="session")
def ray_cluster():
    """One private local Ray for the session (train/preprocess join it instead of starting their own).

    ``address="local"``: never the cluster a `ray start` on this machine left running.
    """
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=8, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}})
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def shared_cache(tiny_model: Path, sample_data: Path, tmp_path_factory: pytest.TempPathFactory, ray_cluster) -> Path:
    """A latent cache of the sample data, built once and reused by the training tests."""
    from ray_ltx.data.pipeline import preprocess

    cache_dir = tmp_path_factory.mktemp("cache") / "cache"
    preprocess(base_config(tiny_model, sample_data, cache_dir.parent / "out", cache_dir=str(cache_dir)))
    return cache_dir


def base_config(tiny_model: Path, sample_data: Path | None, output_dir: Path, **overrides: Any):
    from ray_ltx.config import build_config

    values: dict[str, Any] = {
        "pretrained_model_name_or_path": str(tiny_model),
        "data_root": str(sample_data) if sample_data else None,
        "video_resolution_buckets": BUCKETS,
        "id_token": "BW_STYLE",
        "transformer_dtype": "fp32",
        "vae_dtype": "fp32",
        "text_encoder_dtype": "fp32",
        "rank": 8,
        "lora_alpha": 8,
        "lr": 1e-3,
        "train_steps": 4,
        "checkpointing_steps": 2,
        "num_workers": 2,
        "report_to": "none",
        "output_dir": str(output_dir),
        "log_system_metrics": False,
    }
    if overrides.get("training_type") == "full-finetune":
        del values["rank"], values["lora_alpha"]
    values.update(overrides)
    return build_config(values)


@pytest.fixture
def make_config(tiny_model: Path, sample_data: Path, shared_cache: Path, tmp_path: Path):
    """A training config on the shared cache, writing to this test's tmp dir."""

    def make(**overrides: Any):
        overrides.setdefault("cache_dir", str(shared_cache))
        return base_config(tiny_model, sample_data, tmp_path / "out", **overrides)

    return make


@pytest.fixture(scope="module")
def one_process_group():
    """A one-process gloo group in this process (an engine at world size 1, without Ray); yields its port."""
    import socket

    import torch.distributed as dist

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    yield port
    dist.destroy_process_group()


def copy_tree(source: Path, dest: Path) -> Path:
    shutil.copytree(source, dest)
    return dest


class MlflowServer:
    """A real `mlflow server` on 127.0.0.1 with a SQLite store, which tests can stop and restart.

    With ``auth=(user, password)`` it is MLflow's basic-auth app, with that admin account.
    """

    def __init__(self, root: Path, auth: tuple[str, str] | None = None):
        import socket

        self.root, self.auth = root, auth
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process = None

    def start(self) -> MlflowServer:
        import subprocess
        import sys
        import time
        import urllib.request

        self.root.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
                   "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
                   "--artifacts-destination", str(self.root / "artifacts"), "--workers", "1"]
        env = None
        if self.auth:
            config = self.root / "basic_auth.ini"
            config.write_text(f"[mlflow]\ndefault_permission = READ\ndatabase_uri = sqlite:///{self.root / 'auth.db'}\n")
            command += ["--app-name", "basic-auth"]
            env = {**os.environ, "MLFLOW_AUTH_CONFIG_PATH": str(config), "MLFLOW_FLASK_SERVER_SECRET_KEY": "tests",
                   "MLFLOW_AUTH_ADMIN_USERNAME": self.auth[0], "MLFLOW_AUTH_ADMIN_PASSWORD": self.auth[1]}
        self.log = open(self.root / "server.log", "a")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.uri + "/health", timeout=2):
                    return self
            except OSError:
                if self.process.poll() is not None:
                    raise RuntimeError((self.root / "server.log").read_text()[-3000:]) from None
                time.sleep(0.5)
        raise RuntimeError("mlflow server did not start in 120 s")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except Exception:
                self.process.kill()
        self.process = None
        self.log.close()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server")).start()
    yield server
    server.stop()
