"""The cluster kit (cluster/, docs/cluster.md): manifests that hold together, and real Ray job runs.

The fast tests read the KubeRay manifests, the cluster-launcher config, the runtime env and the
cluster training config, and check what a cluster needs from them (GPU limits, the shared mount,
an entrypoint that is a real ``ray-ltx`` command with a config that parses).

The slow tests start real Ray clusters on this machine with ``ray start --block`` (token
authentication on, every port chosen free, a private temp dir) and drive them the way
docs/cluster.md tells a user to: ``ray job submit --working-dir ... --runtime-env
cluster/runtime_env.yaml -- python -m ray_ltx train ...``, ``ray job stop``, a resubmission with
``--resume_from_checkpoint latest``, and two training workers on two different nodes. Each cluster
is torn down by ending the processes these tests started, never with ``ray stop``, which would end
every Ray cluster on the machine.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from ray_ltx.cli import build_parser, config_from_args
from ray_ltx.config import load_config

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
RAYJOB = CLUSTER / "kuberay-rayjob.yaml"
RAYCLUSTER = CLUSTER / "kuberay-raycluster.yaml"
LAUNCHER = CLUSTER / "aws-gpu.yaml"
RUNTIME_ENV = CLUSTER / "runtime_env.yaml"
LORA_CONFIG = CLUSTER / "configs" / "ltx-lora.yaml"
DOC = REPO / "docs" / "cluster.md"
SHARED = "/mnt/shared"
CONFIG_MOUNT = "/configs"

BIN = Path(sys.executable).parent
RAY = str(BIN / "ray")
TINY_BUCKETS = "9x64x96 17x64x96"


# -- manifests ------------------------------------------------------------------------------------


def _docs(path: Path) -> list[dict[str, Any]]:
    docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    assert docs, f"{path} holds no YAML document"
    for doc in docs:
        assert isinstance(doc, dict), f"{path}: every document must be a mapping"
        assert doc.get("apiVersion") and doc.get("kind") and doc.get("metadata", {}).get("name"), \
            f"{path}: a document lacks apiVersion, kind or metadata.name: {str(doc)[:200]}"
    return docs


def _one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [doc for doc in docs if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def _containers(pod_template: dict[str, Any]) -> list[dict[str, Any]]:
    containers = pod_template["spec"]["containers"]
    assert containers, "a pod template without containers"
    return containers


def _mounts(container: dict[str, Any]) -> dict[str, str]:
    return {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}


def _volumes(pod_template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in pod_template["spec"].get("volumes", [])}


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def _check_ray_cluster_spec(spec: dict[str, Any], pvc_name: str) -> None:
    """Head without GPUs, GPU worker groups, the shared PVC everywhere, token auth on."""
    import ray

    assert spec["rayVersion"] == ray.__version__, "rayVersion must match the Ray the image and tests use"
    assert spec.get("authOptions", {}).get("mode") == "token", "token authentication must stay on"

    head = spec["headGroupSpec"]
    head_container = _containers(head["template"])[0]
    for section in ("requests", "limits"):
        assert "nvidia.com/gpu" not in head_container["resources"].get(section, {}), "the head is a CPU pod"
    assert head["rayStartParams"].get("num-cpus") == "0", "no training work on the head"
    assert _mounts(head_container).get(SHARED), "the head (driver) needs the shared mount"
    head_volumes = _volumes(head["template"])
    assert head_volumes[_mounts(head_container)[SHARED]]["persistentVolumeClaim"]["claimName"] == pvc_name
    image = head_container["image"]
    assert image and ":" in image, "pin the image tag"

    groups = spec["workerGroupSpecs"]
    assert groups, "at least one GPU worker group"
    for group in groups:
        assert group["groupName"]
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        container = _containers(group["template"])[0]
        limits = container["resources"]["limits"]
        assert int(limits["nvidia.com/gpu"]) >= 1, f"worker group {group['groupName']} has no GPU limit"
        assert container["resources"]["requests"].get("nvidia.com/gpu") in (None, limits["nvidia.com/gpu"])
        assert container["image"] == image, "head and workers must run the same image"
        volumes = _volumes(group["template"])
        assert volumes[_mounts(container)[SHARED]]["persistentVolumeClaim"]["claimName"] == pvc_name
        assert _env(container).get("HF_HOME", "").startswith(SHARED)
        assert _env(container).get("MLFLOW_TRACKING_URI") == _env(head_container).get("MLFLOW_TRACKING_URI")
        dshm = _mounts(container).get("/dev/shm")
        assert dshm and volumes[dshm]["emptyDir"]["medium"] == "Memory", "NCCL and the object store need /dev/shm"


def _shared_docs(docs: list[dict[str, Any]]) -> tuple[str, str]:
    """The RWX PVC and the MLflow service beside the cluster; returns (pvc name, tracking URI)."""
    pvc = _one(docs, "PersistentVolumeClaim")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"], "every pod mounts the PVC at once"
    service = _one(docs, "Service")
    deployment = _one(docs, "Deployment")
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items(), \
        "the MLflow Service selects no pod of the MLflow Deployment"
    mlflow = _containers(deployment["spec"]["template"])[0]
    command = " ".join(mlflow.get("command", []) + mlflow.get("args", []))
    assert "mlflow server" in command and f"sqlite:///{SHARED}/" in command
    assert _volumes(deployment["spec"]["template"])[_mounts(mlflow)[SHARED]]["persistentVolumeClaim"][
        "claimName"] == pvc["metadata"]["name"]
    port = service["spec"]["ports"][0]["port"]
    return pvc["metadata"]["name"], f"http://{service['metadata']['name']}:{port}"


def _entrypoint_config(argv: list[str]) -> tuple[Any, Path]:
    """Parse a `python -m ray_ltx ...` command line; returns (parsed args, the config file in the repo)."""
    assert argv[:3] == ["python", "-m", "ray_ltx"], f"the entrypoint must run the ray-ltx CLI: {argv}"
    args = build_parser().parse_args(argv[3:])
    assert args.command == "train"
    config_path = Path(args.config)
    if config_path.is_absolute():
        assert str(config_path).startswith(CONFIG_MOUNT + "/"), f"{config_path}: not in the {CONFIG_MOUNT} ConfigMap"
        config_path = CLUSTER / "configs" / config_path.relative_to(CONFIG_MOUNT)
    else:
        config_path = REPO / config_path
    assert config_path.is_file(), f"the entrypoint's config {args.config} is not in the repo ({config_path})"
    args.config = str(config_path)
    return args, config_path


def test_rayjob_manifest() -> None:
    docs = _docs(RAYJOB)
    pvc_name, tracking_uri = _shared_docs(docs)
    job = _one(docs, "RayJob")
    assert job["apiVersion"] == "ray.io/v1"
    spec = job["spec"]
    assert spec["entrypoint"].strip()
    _check_ray_cluster_spec(spec["rayClusterSpec"], pvc_name)

    head = spec["rayClusterSpec"]["headGroupSpec"]
    head_container = _containers(head["template"])[0]
    assert _env(head_container)["MLFLOW_TRACKING_URI"] == tracking_uri
    configs_volume = _volumes(head["template"])[_mounts(head_container)[CONFIG_MOUNT]]
    assert configs_volume["configMap"]["name"], "the entrypoint's config comes from a ConfigMap on the head"

    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    from ray.runtime_env import RuntimeEnv

    RuntimeEnv(**runtime_env)  # raises on unknown fields / bad types
    assert all(isinstance(v, str) for v in runtime_env["env_vars"].values())
    file_env = yaml.safe_load(RUNTIME_ENV.read_text())["env_vars"]
    assert runtime_env["env_vars"].items() <= file_env.items(), "keep runtimeEnvYAML in step with runtime_env.yaml"


def test_rayjob_entrypoint_is_a_real_train_command() -> None:
    job = _one(_docs(RAYJOB), "RayJob")
    args, config_path = _entrypoint_config(shlex.split(job["spec"]["entrypoint"]))
    assert config_path == LORA_CONFIG
    assert args.resume_from_checkpoint == "latest", "a retried RayJob must continue from the PVC, not restart"
    config = config_from_args(args)
    assert config.training.resume_from_checkpoint == "latest"
    assert config.output_dir.startswith(SHARED + "/")


def test_raycluster_matches_rayjob() -> None:
    job_docs, cluster_docs = _docs(RAYJOB), _docs(RAYCLUSTER)
    cluster = _one(cluster_docs, "RayCluster")
    assert cluster["apiVersion"] == "ray.io/v1"
    job_spec = _one(job_docs, "RayJob")["spec"]["rayClusterSpec"]
    assert cluster["spec"] == job_spec, "kuberay-raycluster.yaml must run the same cluster as kuberay-rayjob.yaml"
    for kind in ("PersistentVolumeClaim", "Deployment", "Service"):
        assert _one(cluster_docs, kind) == _one(job_docs, kind), f"the {kind} differs between the two manifests"


def test_lora_config_is_full_size_on_the_shared_mount() -> None:
    config = load_config(LORA_CONFIG)
    assert config.model.pretrained_model_name_or_path == "Lightricks/LTX-Video"
    assert [str(b) for b in config.data.video_resolution_buckets] == ["49x512x768"]
    assert config.training.training_type == "lora"
    assert config.training.gradient_checkpointing
    assert config.model.transformer_dtype == "bf16"
    resolved = config.resolved()
    for where in (resolved.output_dir, resolved.cache_dir, resolved.storage_path, resolved.data.data_root):
        assert where.startswith(SHARED + "/"), f"{where}: every node must see it, put it on {SHARED}"
    assert config.distributed.min_workers > 1 and config.distributed.max_failures > 0
    # Workers per job: at least the GPUs the KubeRay worker groups always have, at most all they can have.
    groups = _one(_docs(RAYJOB), "RayJob")["spec"]["rayClusterSpec"]["workerGroupSpecs"]

    def gpus(replicas: str) -> int:
        return sum(g[replicas] * int(_containers(g["template"])[0]["resources"]["limits"]["nvidia.com/gpu"])
                   for g in groups)

    assert (config.distributed.min_workers, config.distributed.max_workers) == (gpus("minReplicas"),
                                                                                gpus("maxReplicas"))


def _is_spot(pod_spec: dict[str, Any]) -> bool:
    return any("spot" in f"{key}={value}".lower() for key, value in pod_spec.get("nodeSelector", {}).items())


@pytest.mark.parametrize("path", [RAYJOB, RAYCLUSTER])
def test_spot_worker_group_makes_the_run_elastic(path: Path) -> None:
    """On-demand GPU pods for MIN workers, an autoscaled spot group up to MAX, and a config that spans both."""
    docs = _docs(path)
    spec = (_one(docs, "RayJob")["spec"]["rayClusterSpec"] if path == RAYJOB else _one(docs, "RayCluster")["spec"])
    assert spec["enableInTreeAutoscaling"] is True, "the autoscaler sizes the spot group between min and max"
    groups = spec["workerGroupSpecs"]
    spot = [g for g in groups if _is_spot(g["template"]["spec"])]
    on_demand = [g for g in groups if not _is_spot(g["template"]["spec"])]
    assert spot and on_demand, "one group on spot nodes, one on on-demand nodes"
    for group in spot:
        pod = group["template"]["spec"]
        assert group["minReplicas"] < group["maxReplicas"], f"{group['groupName']}: spot pods come and go"
        tolerated = {t["key"] for t in pod["tolerations"]}
        assert any("spot" in key for key in tolerated), f"{group['groupName']} tolerates no spot taint: {tolerated}"
        assert "nvidia.com/gpu" in tolerated
    for group in on_demand:
        assert group["minReplicas"] == group["replicas"] >= 1, "the on-demand pods are always there"
        assert group["template"]["spec"].get("nodeSelector"), "on-demand pods stay off spot nodes"
    config = load_config(LORA_CONFIG)
    assert config.distributed.elastic and config.distributed.backend == "ddp"
    on_demand_gpus = sum(g["minReplicas"] * int(_containers(g["template"])[0]["resources"]["limits"]
                                                ["nvidia.com/gpu"]) for g in on_demand)
    assert config.distributed.min_workers == on_demand_gpus, "MIN: what survives losing every spot node"


def test_runtime_env_file() -> None:
    from ray.runtime_env import RuntimeEnv

    data = yaml.safe_load(RUNTIME_ENV.read_text())
    RuntimeEnv(**data)
    env_vars = data["env_vars"]
    assert all(isinstance(v, str) for v in env_vars.values()), "runtime env values must be strings"
    assert any(k.startswith("NCCL_") for k in env_vars)
    text = RUNTIME_ENV.read_text()
    for name in ("NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME"):
        assert name in text, f"runtime_env.yaml should show where {name} goes"
    assert "working_dir" not in data, "--working-dir . on the command line names the code to ship"
    assert "pip" not in data, "the cluster image holds the dependencies"


@pytest.mark.parametrize("path", [RUNTIME_ENV, RAYJOB])
def test_runtime_env_leaves_the_driver_s_variables_alone(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray refuses a job whose runtime env sets a variable that the driver's ray.init() also sets.

    ray_ltx.cluster.init_ray passes some of the driver's variables to ray.init(runtime_env=...)
    (inside a job the driver has every variable of the job's runtime env), so a runtime env that
    names one of them fails every job with "Failed to merge the Job's runtime env".
    """
    from ray_ltx import cluster

    if path == RAYJOB:
        env_vars = yaml.safe_load(_one(_docs(RAYJOB), "RayJob")["spec"]["runtimeEnvYAML"])["env_vars"]
    else:
        env_vars = yaml.safe_load(path.read_text())["env_vars"]
    for name, value in env_vars.items():
        monkeypatch.setenv(name, value)
    forwarded = set(cluster._forwarded_env())
    assert not forwarded & set(env_vars), f"{path.name} sets {sorted(forwarded & set(env_vars))}"


def test_cluster_launcher_config() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load(LAUNCHER.read_text())
    for key in ("cluster_name", "provider", "available_node_types", "head_node_type", "max_workers"):
        assert key in config, f"aws-gpu.yaml lacks {key}"
    assert config["provider"]["type"] == "aws" and config["provider"]["region"]
    types = config["available_node_types"]
    assert config["head_node_type"] in types
    assert types[config["head_node_type"]]["resources"].get("GPU", 0) == 0
    gpu_types = [name for name, node in types.items() if node["resources"].get("GPU", 0) > 0]
    assert gpu_types, "no GPU node type"
    distributed = load_config(LORA_CONFIG).distributed
    assert sum(types[name].get("min_workers", 0) * types[name]["resources"]["GPU"] for name in gpu_types) >= \
        distributed.max_workers, "min_workers must cover the config's GPU workers"
    spot = [name for name in gpu_types
            if types[name]["node_config"].get("InstanceMarketOptions", {}).get("MarketType") == "spot"]
    assert spot, "a spot GPU node type"
    assert sum(types[name].get("min_workers", 0) * types[name]["resources"]["GPU"] for name in gpu_types
               if name not in spot) >= distributed.min_workers, "on-demand nodes must hold the run's MIN workers"
    commands = " ".join(config["head_start_ray_commands"] + config["worker_start_ray_commands"])
    assert commands.count("RAY_AUTH_MODE=token") == 2, "every node starts with token authentication"
    assert "~/.ray/auth_token" in config["file_mounts"]
    assert SHARED in " ".join(config["initialization_commands"])
    assert any(f"{SHARED}:{SHARED}" in option for option in config["docker"]["run_options"])
    # Ray's own schema check, as `ray up` runs it (defaults filled in, no cloud calls).
    validate_config(prepare_config(copy.deepcopy(config)))


def test_dockerfile_matches_ray_version() -> None:
    import ray

    text = (CLUSTER / "Dockerfile").read_text()
    base = re.search(r"^FROM\s+rayproject/ray:(\S+)", text, re.MULTILINE)
    assert base and base.group(1).startswith(ray.__version__ + "-"), "the base image must run the same Ray"
    images = {_containers(_one(_docs(RAYJOB), "RayJob")["spec"]["rayClusterSpec"]["headGroupSpec"]["template"])[0]
              ["image"], yaml.safe_load(LAUNCHER.read_text())["docker"]["image"]}
    assert len(images) == 1, f"the manifests name different images: {images}"


def _pod_specs(node: Any, where: str = "") -> list[tuple[str, dict[str, Any]]]:
    """Every pod spec in a manifest (anything holding `containers`): Deployments, Ray groups, the submitter."""
    found = []
    if isinstance(node, dict):
        if isinstance(node.get("containers"), list):
            found.append((where, node))
        for key, value in node.items():
            found += _pod_specs(value, f"{where}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _pod_specs(value, f"{where}[{index}]")
    return found


@pytest.mark.parametrize("path", [RAYJOB, RAYCLUSTER])
def test_every_pod_runs_unprivileged(path: Path) -> None:
    specs = [spec for doc in _docs(path) for spec in _pod_specs(doc, doc["kind"])]
    assert len(specs) >= 3 + (path == RAYJOB), "MLflow, head, GPU workers (and the RayJob submitter)"
    for where, spec in specs:
        pod = spec.get("securityContext") or {}
        assert pod.get("runAsNonRoot") is True and isinstance(pod.get("runAsUser"), int) and pod["runAsUser"] > 0, where
        assert pod.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
        for container in spec["containers"] + spec.get("initContainers", []):
            context = container.get("securityContext") or {}
            assert context.get("allowPrivilegeEscalation") is False, (where, container["name"])
            assert "ALL" in context.get("capabilities", {}).get("drop", []), (where, container["name"])
            assert not context.get("privileged") and context.get("runAsUser", 1) != 0, (where, container["name"])
    ray_spec = next(doc["spec"].get("rayClusterSpec", doc["spec"]) for doc in _docs(path)
                    if doc["kind"] in ("RayJob", "RayCluster"))
    if ray_spec.get("enableInTreeAutoscaling"):  # KubeRay adds the autoscaler's container to the head pod
        context = (ray_spec.get("autoscalerOptions") or {}).get("securityContext") or {}
        assert context.get("allowPrivilegeEscalation") is False and "ALL" in context.get("capabilities", {}).get(
            "drop", []), "the autoscaler sidecar must run unprivileged too"


def _secret_env(container: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {e["name"]: (e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
            for e in container.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})}


@pytest.mark.parametrize("path", [RAYJOB, RAYCLUSTER])
def test_mlflow_asks_for_a_login_and_admits_only_the_ray_pods(path: Path) -> None:
    docs = _docs(path)
    deployment = _one(docs, "Deployment")
    mlflow = _containers(deployment["spec"]["template"])[0]
    command = " ".join(mlflow.get("command", []) + mlflow.get("args", []))
    assert "--app-name basic-auth" in command
    admin = _secret_env(mlflow)
    assert {"MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"} <= set(admin)
    ray_spec = next(doc["spec"].get("rayClusterSpec", doc["spec"]) for doc in docs if doc["kind"] in ("RayJob", "RayCluster"))
    ray_templates = [ray_spec["headGroupSpec"]["template"]] + [g["template"] for g in ray_spec["workerGroupSpecs"]]
    for template in ray_templates:  # every Ray pod logs in with the admin account's Secret
        login = _secret_env(_containers(template)[0])
        assert login["MLFLOW_TRACKING_USERNAME"] == admin["MLFLOW_AUTH_ADMIN_USERNAME"]
        assert login["MLFLOW_TRACKING_PASSWORD"] == admin["MLFLOW_AUTH_ADMIN_PASSWORD"]

    policy = _one(docs, "NetworkPolicy")["spec"]
    mlflow_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= mlflow_labels.items(), "the policy must select MLflow"
    assert policy["policyTypes"] == ["Ingress"]
    (rule,) = policy["ingress"]
    assert [p["port"] for p in rule["ports"]] == [_one(docs, "Service")["spec"]["ports"][0]["targetPort"]]
    for source in rule["from"]:
        assert set(source) == {"podSelector"}, "only pods of this namespace, no ipBlock / namespaceSelector"
        for template in ray_templates:
            assert source["podSelector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
        assert not source["podSelector"]["matchLabels"].items() <= mlflow_labels.items()


def test_launcher_mlflow_asks_for_a_login() -> None:
    config = yaml.safe_load(LAUNCHER.read_text())
    command = " ".join(config["head_start_ray_commands"])
    assert "mlflow server --app-name basic-auth" in command and "MLFLOW_AUTH_ADMIN_PASSWORD" in command
    assert "~/.mlflow/credentials" in config["file_mounts"], "every node's MLflow client needs the login"


def test_no_world_writable_path() -> None:
    for path in [*CLUSTER.rglob("*"), DOC]:
        if path.is_file():
            text = path.read_text()
            assert not re.search(r"\b0?[0-7]?777\b|\b[ao]\+w", text), f"{path}: world-writable"
            for mode in re.findall(r"chmod\s+(?:-R\s+)?([0-7]{3,4})\b", text):
                assert int(mode[-1]) & 2 == 0, f"{path}: chmod {mode} is world-writable"


def test_doc_commands_parse() -> None:
    """Every `python -m ray_ltx ...` line of docs/cluster.md is a valid command; the files it names exist."""
    text = DOC.read_text()
    commands = []
    for block in re.findall(r"```(?:bash|sh|console)?\n(.*?)```", text, re.DOTALL):
        for command in block.replace("\\\n", " ").splitlines():
            if "python -m ray_ltx" in command:
                commands.append(command[command.index("python -m ray_ltx"):])
    assert len(commands) >= 3
    parser = build_parser()
    for command in commands:
        argv = shlex.split(command.split("#")[0])
        if "<" in command or "$" in command or "--help" in argv:
            continue  # placeholders, help
        args = parser.parse_args(argv[3:])
        if getattr(args, "config", None):
            assert (REPO / args.config).is_file(), f"docs/cluster.md: {args.config} does not exist"
            config_from_args(args)
    for path in re.findall(r"\b(cluster/[\w./-]+\.(?:yaml|md)|cluster/Dockerfile)\b", text):
        assert (REPO / path).exists(), f"docs/cluster.md names {path}, which does not exist"
    assert "RAY_AUTH_MODE=token" in text and "ray job stop" in text and "--resume_from_checkpoint latest" in text


# -- local Ray clusters ---------------------------------------------------------------------------


def _free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _tail(text: str, chars: int = 6000) -> str:
    return text[-chars:]


class LocalRayCluster:
    """A Ray cluster of `ray start --block` processes on this machine, with token auth on.

    Every port is picked free and every node has its own short temp dir, so clusters of other test
    runs on the same machine are left alone; `shutdown` ends exactly the processes started here.
    """

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="rlc-", dir="/tmp"))  # short: Ray's socket paths
        token = self.root / "auth_token"
        token.write_text(secrets.token_hex(32))
        token.chmod(0o600)
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        env.update({
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(token),
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # `python` of entrypoints = this venv
            "PYTHONUNBUFFERED": "1",
        })
        env.pop("MLFLOW_TRACKING_URI", None)
        self.env = env
        self.nodes: list[tuple[str, subprocess.Popen]] = []
        self.gcs_port, self.dashboard_port = _free_ports(2)
        self.dashboard = f"http://127.0.0.1:{self.dashboard_port}"
        self.gcs = f"127.0.0.1:{self.gcs_port}"

    # processes

    def _start(self, name: str, args: list[str]) -> subprocess.Popen:
        log = (self.root / f"{name}.log").open("w")
        agent_port, grpc_port, metrics_port, env_agent_port = _free_ports(4)
        command = [RAY, "start", *args, "--node-ip-address", "127.0.0.1", "--disable-usage-stats",
                   "--temp-dir", str(self.root / name), "--dashboard-agent-listen-port", str(agent_port),
                   "--dashboard-agent-grpc-port", str(grpc_port), "--metrics-export-port", str(metrics_port),
                   "--runtime-env-agent-port", str(env_agent_port), "--block"]
        process = subprocess.Popen(command, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True, cwd=self.root)
        log.close()
        self.nodes.append((name, process))
        return process

    def start_head(self, num_cpus: int = 8) -> None:
        (client_port,) = _free_ports(1)
        self._start("head", ["--head", "--port", str(self.gcs_port), "--dashboard-host", "127.0.0.1",
                             "--dashboard-port", str(self.dashboard_port), "--ray-client-server-port",
                             str(client_port), "--num-cpus", str(num_cpus)])
        self.wait_ready()

    def add_node(self, name: str, num_cpus: int, resources: dict[str, float]) -> subprocess.Popen:
        return self._start(name, ["--address", self.gcs, "--num-cpus", str(num_cpus),
                                  "--resources", json.dumps(resources)])

    def node_log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _check_alive(self) -> None:
        for name, process in self.nodes:
            if process.poll() is not None:
                raise RuntimeError(f"`ray start` of {name} exited with {process.returncode}:\n"
                                   f"{_tail(self.node_log(name))}")

    def stop_node(self, process: subprocess.Popen, grace: float = 60.0) -> None:
        import psutil

        try:
            family = psutil.Process(process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            family = []
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(grace)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(30)
        _, alive = psutil.wait_procs(family, timeout=15)
        for child in alive:  # only processes of this node (psutil checks the pid was not reused)
            try:
                child.kill()
            except psutil.NoSuchProcess:
                pass
        self.nodes = [(n, p) for n, p in self.nodes if p is not process]

    @classmethod
    @contextlib.contextmanager
    def running(cls, num_cpus: int):
        """A started head (``num_cpus`` CPUs), shut down on exit."""
        cluster = cls()
        try:
            cluster.start_head(num_cpus=num_cpus)
            yield cluster
        finally:
            cluster.shutdown()

    def shutdown(self) -> None:
        for _, process in reversed(list(self.nodes)):  # worker nodes first, the head last
            self.stop_node(process)
        shutil.rmtree(self.root, ignore_errors=True)

    # the Ray CLI, as a user runs it

    def ray(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
        result = subprocess.run([RAY, *args], env=self.env, capture_output=True, text=True, timeout=timeout,
                                cwd=self.root)
        result.stdout = _ANSI.sub("", result.stdout + result.stderr)
        return result

    def submit(self, workdir: Path, train_args: list[str], *, submission_id: str, wait: bool = True,
               timeout: float = 1500.0) -> subprocess.CompletedProcess:
        """`ray job submit --working-dir WORKDIR --runtime-env cluster/runtime_env.yaml -- python -m ray_ltx train ...`"""
        command = ["job", "submit", "--address", self.dashboard, "--submission-id", submission_id,
                   "--working-dir", str(workdir), "--runtime-env", str(RUNTIME_ENV), "--log-style", "record",
                   "--log-color", "false"]
        if not wait:
            command.append("--no-wait")
        command += ["--", "python", "-m", "ray_ltx", "train", *train_args]
        return self.ray(*command, timeout=timeout)

    def job_status(self, submission_id: str) -> str:
        out = self.ray("job", "status", submission_id, "--address", self.dashboard).stdout
        for word, status in (("succeeded", "SUCCEEDED"), ("was stopped", "STOPPED"), ("failed", "FAILED")):
            if f"Job '{submission_id}' {word}" in out:
                return status
        found = re.search(rf"Status for job '{re.escape(submission_id)}': (?:JobStatus\.)?(\w+)", out)
        if not found:
            raise RuntimeError(f"cannot read the status of {submission_id}:\n{_tail(out)}")
        return found.group(1)

    def job_logs(self, submission_id: str) -> str:
        return self.ray("job", "logs", submission_id, "--address", self.dashboard).stdout

    def wait_job(self, submission_id: str, timeout: float = 1500.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.job_status(submission_id)
            if status in ("SUCCEEDED", "FAILED", "STOPPED"):
                return status
            time.sleep(3)
        raise TimeoutError(f"job {submission_id} still running after {timeout:.0f} s")

    def wait_ready(self, resources: dict[str, float] | None = None, timeout: float = 240.0) -> dict[str, float]:
        """Until a job runs (dashboard, job agent and auth all up) and sees `resources`; returns the cluster's."""
        probe = "import json, ray; ray.init(); print('RESOURCES=' + json.dumps(ray.cluster_resources()))"
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            self._check_alive()
            result = self.ray("job", "submit", "--address", self.dashboard, "--submission-id",
                              f"ready-{secrets.token_hex(4)}", "--log-style", "record", "--", "python", "-c",
                              probe, timeout=180)
            last = result.stdout
            found = re.search(r"RESOURCES=(\{.*\})", last)
            if result.returncode == 0 and found:
                have = json.loads(found.group(1))
                if all(have.get(k, 0) >= v for k, v in (resources or {}).items()):
                    return have
            time.sleep(2)
        raise TimeoutError(f"the local Ray cluster is not ready after {timeout:.0f} s:\n{_tail(last)}\n"
                           f"head log:\n{_tail(self.node_log('head'))}")


# -- fixtures for the slow tests ------------------------------------------------------------------


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny LTX-Video pipeline, four sample clips, and one latent cache for every job of this module."""
    root = tmp_path_factory.mktemp("cluster-assets")
    for command in (["make-tiny-model", "--out", str(root / "model")],
                    ["make-sample-data", "--out", str(root / "data"), "--num_clips", "4"]):
        subprocess.run([sys.executable, "-m", "ray_ltx", *command], check=True, capture_output=True, timeout=600)
    return {"model": root / "model", "data": root / "data", "cache": root / "cache"}


@pytest.fixture(scope="module")
def ray_cluster() -> LocalRayCluster:
    with LocalRayCluster.running(num_cpus=8) as cluster:
        yield cluster


def _workdir(tmp_path: Path, assets: dict[str, Path]) -> Path:
    """What `--working-dir` uploads: a directory holding just the job's config."""
    workdir = tmp_path / "job"
    workdir.mkdir()
    config = {
        "pretrained_model_name_or_path": str(assets["model"]),
        "data_root": str(assets["data"]),
        "video_resolution_buckets": TINY_BUCKETS,
        "cache_dir": str(assets["cache"]),
        "transformer_dtype": "fp32",
        "vae_dtype": "fp32",
        "text_encoder_dtype": "fp32",
        "rank": 8,
        "lora_alpha": 8,
        "log_system_metrics": False,
        "tracker_name": "ray-ltx-cluster-test",
    }
    (workdir / "tiny.yaml").write_text(yaml.safe_dump(config))
    return workdir


def _mlflow_runs(uri: str) -> list[Any]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("ray-ltx-cluster-test")
    assert experiment is not None, f"no MLflow experiment in {uri}"
    return client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])


def _complete_checkpoints(run_dir: Path) -> list[int]:
    """Steps of the checkpoints in `run_dir` whose files are all there."""
    steps = []
    for path in sorted(run_dir.glob("checkpoint_*")):
        if (path / "state.json").is_file() and list(path.glob("complete-rank*.json")):
            try:
                steps.append(json.loads((path / "state.json").read_text())["step"])
            except (json.JSONDecodeError, KeyError):
                pass  # still being written
    return sorted(steps)


def _assert_succeeded(result: subprocess.CompletedProcess, submission_id: str, cluster: LocalRayCluster) -> str:
    logs = result.stdout
    assert result.returncode == 0, f"ray job submit exited {result.returncode}:\n{_tail(logs)}"
    assert f"Job '{submission_id}' succeeded" in logs, _tail(logs)
    assert cluster.job_status(submission_id) == "SUCCEEDED"
    return logs


def _assert_outputs(output_dir: Path, train_steps: int) -> dict[str, Any]:
    assert (output_dir / "pytorch_lora_weights.safetensors").stat().st_size > 0
    block = json.loads((output_dir / "training_config.json").read_text())
    assert block["train steps"] == train_steps
    steps = _complete_checkpoints(output_dir / "ray" / "train")
    assert steps and steps[-1] == train_steps, f"checkpoints at steps {steps}"
    return block


# -- slow: real jobs on real local clusters -------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_job(ray_cluster: LocalRayCluster, assets: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    """One `ray job submit` of a tiny end-to-end training run (preprocessing included): its id, logs, paths."""
    tmp = tmp_path_factory.mktemp("tiny-job")
    output_dir, uri = tmp / "out", f"sqlite:///{tmp / 'mlflow' / 'mlflow.db'}"
    submission_id = f"ray-ltx-e2e-{secrets.token_hex(4)}"
    started = time.monotonic()
    result = ray_cluster.submit(_workdir(tmp, assets), [
        "--config", "tiny.yaml", "--output_dir", str(output_dir), "--mlflow_tracking_uri", uri,
        "--train_steps", "4", "--checkpointing_steps", "2"], submission_id=submission_id)
    return {"result": result, "id": submission_id, "output_dir": output_dir, "uri": uri,
            "seconds": time.monotonic() - started}


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_job_submit_trains_end_to_end(tiny_job, ray_cluster: LocalRayCluster) -> None:
    logs = _assert_succeeded(tiny_job["result"], tiny_job["id"], ray_cluster)
    # a job's log is not a terminal: progress comes as lines with an ETA, without Ray's per-report chatter
    assert re.search(r"step \d/4 steps \(\d+%\), loss [0-9.]+.*ETA \d+:\d\d", logs), _tail(logs)
    assert "step 4/4 steps (100%)" in logs, _tail(logs)
    assert "Reporting training result" not in logs and "Failed to query Ray Train Controller" not in logs
    _assert_outputs(tiny_job["output_dir"], 4)
    runs = _mlflow_runs(tiny_job["uri"])
    assert [run.info.status for run in runs] == ["FINISHED"]
    run = runs[0]
    assert run.data.metrics.get("loss") is not None
    assert run.data.params["training.train_steps"] == "4"


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_job_run_is_tagged_with_the_ray_job_id(tiny_job, ray_cluster: LocalRayCluster) -> None:
    _assert_succeeded(tiny_job["result"], tiny_job["id"], ray_cluster)
    (run,) = _mlflow_runs(tiny_job["uri"])
    tags = dict(run.data.tags)
    tag = tags.get("ray_job_id")
    assert tag == tiny_job["id"], (
        "the MLflow run of a `ray job submit` job should carry the job's submission id as the "
        f"ray_job_id tag; tags: {sorted(tags)}")


@pytest.mark.full
@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_job_stop_then_resume_from_latest_checkpoint(ray_cluster: LocalRayCluster, assets: dict[str, Path],
                                                     tmp_path: Path) -> None:
    train_steps = 40
    workdir = _workdir(tmp_path, assets)
    output_dir, uri = tmp_path / "out", f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    run_dir = output_dir / "ray" / "train"
    args = ["--config", "tiny.yaml", "--output_dir", str(output_dir), "--mlflow_tracking_uri", uri,
            "--train_steps", str(train_steps), "--checkpointing_steps", "2"]

    first = f"ray-ltx-stop-{secrets.token_hex(4)}"
    submitted = ray_cluster.submit(workdir, args, submission_id=first, wait=False, timeout=300)
    assert submitted.returncode == 0, _tail(submitted.stdout)

    deadline = time.monotonic() + 1200
    while not _complete_checkpoints(run_dir):
        status = ray_cluster.job_status(first)
        assert status in ("PENDING", "RUNNING"), f"job ended {status} before its first checkpoint:\n" \
                                                 f"{_tail(ray_cluster.job_logs(first))}"
        assert time.monotonic() < deadline, "no checkpoint after 20 minutes"
        time.sleep(1)

    stopped = ray_cluster.ray("job", "stop", first, "--address", ray_cluster.dashboard, timeout=300)
    assert stopped.returncode == 0, _tail(stopped.stdout)
    status = ray_cluster.wait_job(first, timeout=300)
    assert status == "STOPPED", f"`ray job stop` left the job {status}:\n{_tail(ray_cluster.job_logs(first))}"
    checkpoints = _complete_checkpoints(run_dir)
    assert checkpoints and checkpoints[-1] < train_steps, f"the run finished before it was stopped: {checkpoints}"
    assert not (output_dir / "training_config.json").exists()

    (stopped_run,) = _mlflow_runs(uri)
    stopped_status = stopped_run.info.status  # checked last, so that the resume below is exercised anyway

    second = f"ray-ltx-resume-{secrets.token_hex(4)}"
    result = ray_cluster.submit(workdir, [*args, "--resume_from_checkpoint", "latest"], submission_id=second)
    logs = _assert_succeeded(result, second, ray_cluster)
    resumed = re.search(r"resuming from (\S+) \(step (\d+)\)", logs)
    assert resumed, f"the resumed job does not say where it resumed from:\n{_tail(logs)}"
    step = int(resumed.group(2))
    assert 0 < step < train_steps and step in checkpoints, (step, checkpoints)
    assert Path(resumed.group(1)).name == f"checkpoint_{step:08d}"
    started_at = re.search(r"starting at step (\d+) of (\d+)", logs)
    assert started_at and int(started_at.group(1)) == step and int(started_at.group(2)) == train_steps, \
        "the workers did not load the checkpoint the driver resumed from"

    _assert_outputs(output_dir, train_steps)
    (run,) = _mlflow_runs(uri)  # the resumed job continued the stopped job's run
    assert run.info.run_id == stopped_run.info.run_id and run.info.status == "FINISHED"
    from mlflow.tracking import MlflowClient

    history = MlflowClient(tracking_uri=uri).get_metric_history(run.info.run_id, "loss")
    assert sorted(m.step for m in history) == list(range(1, train_steps + 1)), "one loss curve, no gap, no repeat"

    assert stopped_status in ("KILLED", "FAILED"), (
        f"`ray job stop` left the job's MLflow run {stopped_status}: the driver must end it (KILLED) "
        "within the job supervisor's grace period (RAY_JOB_STOP_WAIT_TIME_S, 3 s by default)")


@pytest.mark.full
@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_two_workers_on_two_nodes(ray_cluster: LocalRayCluster, assets: dict[str, Path], tmp_path: Path) -> None:
    """Two worker nodes that each fit one training worker (a custom resource); STRICT_SPREAD over them."""
    nodes = [ray_cluster.add_node("node-a", 2, {"ltx_trainer": 1, "node_a": 1}),
             ray_cluster.add_node("node-b", 2, {"ltx_trainer": 1, "node_b": 1})]
    try:
        ray_cluster.wait_ready({"ltx_trainer": 2, "node_a": 1, "node_b": 1})
        output_dir, uri = tmp_path / "out", f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
        submission_id = f"ray-ltx-2nodes-{secrets.token_hex(4)}"
        result = ray_cluster.submit(_workdir(tmp_path, assets), [
            "--config", "tiny.yaml", "--output_dir", str(output_dir), "--mlflow_tracking_uri", uri,
            "--train_steps", "4", "--checkpointing_steps", "2", "--num_workers", "2",
            "--placement_strategy", "STRICT_SPREAD", "--resources_per_worker", '{"ltx_trainer": 1}'],
            submission_id=submission_id)
        logs = _assert_succeeded(result, submission_id, ray_cluster)
        block = _assert_outputs(output_dir, 4)
        assert block["train batch size"] == 2  # batch_size 1 x 2 workers
        # (The log's local_rank/node_rank group workers by IP, and every node here is 127.0.0.1.)
        assert re.search(r"worker group of size 2", logs), _tail(logs)

        # Where Ray put them: one RayTrainWorker actor on each of the two new nodes.
        listed = ray_cluster.ray("list", "nodes", "--address", ray_cluster.gcs, "--format", "json", "--detail",
                                 "--limit", "100")
        assert listed.returncode == 0, _tail(listed.stdout)
        node_list = json.loads(listed.stdout[listed.stdout.index("["):])
        trainer_nodes = {n["node_id"] for n in node_list if n["resources_total"].get("ltx_trainer")}
        assert len(trainer_nodes) == 2
        listed = ray_cluster.ray("list", "actors", "--address", ray_cluster.gcs, "--format", "json", "--detail",
                                 "--filter", "class_name=RayTrainWorker", "--limit", "1000")
        assert listed.returncode == 0, _tail(listed.stdout)
        actors = json.loads(listed.stdout[listed.stdout.index("["):])
        on_new_nodes = [a["node_id"] for a in actors if a.get("node_id") in trainer_nodes]
        assert sorted(on_new_nodes) == sorted(trainer_nodes), f"training workers by node: {on_new_nodes}"

        (run,) = _mlflow_runs(uri)
        assert run.info.status == "FINISHED"
        assert run.data.params["cluster.nodes"] == "3" and run.data.params["cluster.workers"] == "2"
    finally:
        for process in nodes:
            ray_cluster.stop_node(process)
