"""Connecting to Ray: an existing cluster when one is named or running, a local one otherwise."""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import ray

from ray_ltx.config import Config

log = logging.getLogger(__name__)

# Ray Data decode tasks, encode actors and train workers each take a CPU slot; on a laptop-sized
# machine (2 cores) a local cluster would deadlock with only physical CPUs, so it advertises more
# logical CPUs than cores. Real clusters declare their own resources.
_MIN_LOCAL_CPUS = 8


def init_ray(config: Config | None = None) -> None:
    """Join the cluster of `distributed.ray_address`, `RAY_ADDRESS`, a live `ray start` cluster on this
    machine, or start a private local one.

    Inside `ray job submit` RAY_ADDRESS is set, so the job's driver joins the job's cluster. A cluster
    started with `ray start --head` on this machine is joined (and the log says so); the address file a
    crashed one leaves behind is ignored. `--ray_address local` always starts a private cluster, whose
    dashboard binds to 127.0.0.1 only.
    """
    if ray.is_initialized():
        return
    address = (config.distributed.ray_address if config else None) or os.environ.get("RAY_ADDRESS")
    runtime_env = _driver_runtime_env()
    if address and address != "local":
        log.info("connecting to the Ray cluster at %s", address)
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
        return
    running = None if address == "local" else running_local_cluster()
    if running:
        log.info("joining the Ray cluster already running on this machine at %s (started with `ray start`); "
                 "pass --ray_address local to start a private one instead", running)
        ray.init(address=running, runtime_env=runtime_env, log_to_driver=True)
        return
    cpus = max(os.cpu_count() or 1, _MIN_LOCAL_CPUS)
    log.info("starting a local Ray cluster (%d logical CPUs)", cpus)
    ray.init(
        address="local",
        num_cpus=cpus,
        include_dashboard=False,
        dashboard_host="127.0.0.1",
        runtime_env=runtime_env,
        log_to_driver=True,
    )


def running_local_cluster(timeout: float = 1.0) -> str | None:
    """The address of the cluster `ray start` last started on this machine, if its GCS still answers.

    `ray start` records it in ``<temp dir>/ray/ray_current_cluster``; a cluster that crashed or was
    killed leaves the file behind, so the address counts only if something listens there.
    """
    import socket
    import tempfile

    root = os.environ.get("RAY_TMPDIR") or tempfile.gettempdir()
    path = os.path.join(root, "ray", "ray_current_cluster")
    try:
        with open(path, encoding="utf-8") as handle:
            address = handle.read().strip()
    except OSError:
        return None
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        return None
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return address
    except OSError:
        return None


def job_config() -> dict[str, Any]:
    """The config of the `ray job submit` job this driver runs in (runtime env, metadata); {} outside a job."""
    try:
        value = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _driver_runtime_env() -> dict[str, Any] | None:
    """The env vars to forward, less those the job's own runtime env sets (Ray refuses to merge a key twice),
    and the hook that quiets Ray's repetitive internal log lines in every worker process."""
    from ray_ltx.logs import quiet_ray

    quiet_ray()
    job_env = job_config().get("runtime_env") or {}
    taken = job_env.get("env_vars") or {}
    env = {key: value for key, value in _forwarded_env().items() if key not in taken}
    runtime_env: dict[str, Any] = {"env_vars": env} if env else {}
    if "worker_process_setup_hook" not in job_env:
        runtime_env["worker_process_setup_hook"] = "ray_ltx.logs.quiet_ray"
    return runtime_env or None


def _forwarded_env() -> dict[str, str]:
    """Non-secret settings the workers should share with the driver.

    Credentials (MLflow tokens, HF_TOKEN, cloud keys) are never forwarded: a runtime env is
    recorded in Ray's logs and job records. On a cluster they come from each node's environment
    (a Kubernetes secret, an instance role); a local cluster inherits the driver's environment.
    """
    names = ["HF_HOME", "RAY_LTX_FAULT_DIR", "TOKENIZERS_PARALLELISM"]
    return {name: os.environ[name] for name in names if name in os.environ}


def cluster_gpus() -> float:
    """GPUs the connected cluster has in total."""
    return float(ray.cluster_resources().get("GPU", 0.0))


def cluster_shape() -> dict[str, float]:
    """Nodes, CPUs and GPUs of the connected cluster, for run records."""
    resources = ray.cluster_resources()
    nodes = [node for node in ray.nodes() if node.get("Alive")]
    return {"nodes": len(nodes), "cpus": resources.get("CPU", 0.0), "gpus": resources.get("GPU", 0.0)}
