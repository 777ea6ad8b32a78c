"""Elastic training (``--num_workers MIN:MAX``): the data plan, the config, and real resizes.

The fast tests check the plan's promise (each step trains the same micro-batches with the same
weight in the gradients however many workers share it, so every micro-batch of an epoch is trained
once whatever sizes the run goes through), the worker's cache reader, the journal of worker groups,
and the settings that are refused before any work.

The slow tests train for real on the tiny model: on one node, a 1:2 run that finds room for one
worker only starts at once and follows a fixed 2-worker run's loss curve; on a multi-node local Ray
cluster (``ray start`` processes, one training worker per node), a node stopped mid-run shrinks the
group from 2 workers to 1 and a node added back grows it to 2 again, with each sample of an epoch
trained once, the step count continuous, no jump in the loss, and a LoRA that loads in diffusers.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from conftest import base_config
from ray_ltx.config import build_config
from ray_ltx.errors import ConfigError
from ray_ltx.train.data import DataPlan, MicroBatchReader
from ray_ltx.train.elastic import Journal, describe, log_to_tracker

PER_BUCKET = {"9x64x96": [f"a{i}" for i in range(7)], "17x64x96": [f"b{i}" for i in range(5)],
              "1x64x96": [f"c{i}" for i in range(4)]}


def _plan(accumulation: int, max_workers: int, batch_size: int = 2) -> DataPlan:
    return DataPlan(PER_BUCKET, batch_size, accumulation * max_workers, seed=3)


# -- the plan -------------------------------------------------------------------------------------


@pytest.mark.parametrize("accumulation,max_workers", [(1, 2), (3, 4), (2, 5)])
def test_a_step_trains_the_same_micro_batches_at_every_size(accumulation: int, max_workers: int) -> None:
    plan = _plan(accumulation, max_workers)
    per_step = plan.micro_batches_per_step
    for step in (0, 1, 7):
        wanted = list(range(step * per_step, (step + 1) * per_step))
        for world in range(1, max_workers + 1):
            slots = [plan.slots(step, rank, world) for rank in range(world)]
            assert {len(s) for s in slots} == {plan.passes(world)}, "every worker makes as many passes"
            real = sorted(slot.index for s in slots for slot in s if not slot.padding)
            assert real == wanted, (world, real)
            padding = sum(slot.padding for s in slots for slot in s)
            assert padding == plan.passes(world) * world - per_step
            assert padding == 0 or per_step % world, "padding only where the size does not divide the step"
            contents = {slot.index: (slot.bucket, slot.sample_ids) for s in slots for slot in s if not slot.padding}
            reference = {slot.index: (slot.bucket, slot.sample_ids) for slot in plan.slots(step, 0, 1)}
            assert contents == reference, "a micro-batch holds the same samples whoever trains it"


def test_every_micro_batch_of_an_epoch_is_trained_once_whatever_the_resizes() -> None:
    """Runs that resize at random steps and replay from their last checkpoint, as Ray Train restarts do."""
    rng = random.Random(0)
    for accumulation, max_workers, train_steps, every in ((1, 2, 40, 3), (3, 4, 25, 2), (2, 3, 30, 5)):
        plan = _plan(accumulation, max_workers)
        for _ in range(20):
            trained: dict[int, list] = {}  # step -> the slots of its last execution
            step, sizes = 0, []
            while step < train_steps:
                world = rng.randint(1, max_workers)
                sizes.append(world)
                lost_at = rng.randint(step + 1, train_steps + 3)  # the group is lost after this step (or finishes)
                while step < min(lost_at, train_steps):
                    trained[step] = [slot for rank in range(world) for slot in plan.slots(step, rank, world)]
                    step += 1
                if step < train_steps:
                    step -= step % every  # back to the latest checkpoint
            indices = [index for step in sorted(trained)
                       for index in sorted(slot.index for slot in trained[step] if not slot.padding)]
            assert indices == list(range(train_steps * plan.micro_batches_per_step)), sizes
            epochs: dict[int, list[str]] = {}
            for step in trained.values():
                for slot in step:
                    if not slot.padding:
                        epochs.setdefault(slot.epoch, []).extend(slot.sample_ids)
            complete = (train_steps * plan.micro_batches_per_step) // plan.micro_batches_per_epoch
            for epoch in range(complete):
                # Each sample once; a bucket whose size batch_size does not divide tops up its last micro-batch.
                assert set(epochs[epoch]) == {sid for ids in PER_BUCKET.values() for sid in ids}
                assert len(epochs[epoch]) == plan.micro_batches_per_epoch * plan.batch_size


def test_gradients_are_those_of_the_global_batch_at_every_size() -> None:
    """Each pass's loss times the plan's scale, averaged over the workers as DDP/FSDP do, gives the gradient of
    the mean loss over the step's micro-batches; padding passes add nothing."""
    torch.manual_seed(0)
    weight = torch.randn(3, requires_grad=True)
    inputs = {index: torch.randn(3) for index in range(12)}
    plan = DataPlan({"b": [f"s{i}" for i in range(12)]}, 1, 6, seed=0)  # 6 micro-batches a step (3 x MAX 2)

    def loss(index: int) -> torch.Tensor:
        return (weight * inputs[index]).sum() ** 2

    step = 1
    reference = torch.autograd.grad(torch.stack([loss(i) for i in range(6, 12)]).mean(), weight)[0]
    for world in (1, 2, 4, 5):
        per_worker = []
        for rank in range(world):
            total = sum(loss(slot.index) * (0.0 if slot.padding else plan.loss_scale(world))
                        for slot in plan.slots(step, rank, world))
            per_worker.append(torch.autograd.grad(total, weight)[0])
        torch.testing.assert_close(torch.stack(per_worker).mean(0), reference)


# -- the reader -----------------------------------------------------------------------------------


@pytest.fixture
def small_cache(tmp_path: Path):
    """A cache of 6 samples in one bucket, whose latents hold the sample's number."""
    import numpy as np

    from ray_ltx.data import cache as cache_lib

    rows = []
    for i in range(6):
        latents, shape, dtype = cache_lib.tensor_to_bytes(torch.full((2, 1, 2, 2), float(i)))
        embeds, embeds_shape, embeds_dtype = cache_lib.tensor_to_bytes(torch.zeros(4, 3))
        rows.append({"sample_id": f"s{i}", "caption": "", "rel_path": f"{i}.mp4", "bucket": "9x64x96",
                     "latents": latents, "latents_shape": shape, "latents_dtype": dtype, "prompt_embeds": embeds,
                     "prompt_embeds_shape": embeds_shape, "prompt_embeds_dtype": embeds_dtype,
                     "prompt_attention_mask": np.ones(4, dtype=np.uint8).tobytes(), "caption_truncated": False})
    shard = cache_lib.write_shard(str(tmp_path), "9x64x96", rows, "digest", "{}")
    return cache_lib.LatentCache(str(tmp_path), cache_lib.Manifest({}, {}, ["9x64x96"], [shard]))


def test_the_reader_hands_each_worker_its_passes_in_order(small_cache) -> None:
    plan = DataPlan({"9x64x96": [f"s{i}" for i in range(6)]}, 2, 3, seed=1)  # 3 micro-batches of 2 a step
    reader = MicroBatchReader(plan, small_cache, rank=1, world_size=2, first_step=4, last_step=7)
    try:
        for step in range(4, 7):
            passes = reader.step(step)
            assert [slot for slot, _ in passes] == plan.slots(step, 1, 2)
            for slot, batch in passes:
                assert batch.latents.shape == (2, 2, 1, 2, 2)
                assert [f"s{int(v)}" for v in batch.latents[:, 0, 0, 0, 0]] == list(slot.sample_ids)
    finally:
        reader.close()


def test_a_read_error_reaches_the_training_step(small_cache) -> None:
    plan = DataPlan({"9x64x96": ["s0", "not-in-the-cache"]}, 1, 2, seed=0)
    reader = MicroBatchReader(plan, small_cache, rank=0, world_size=1, first_step=0, last_step=3)
    with pytest.raises(KeyError, match="not-in-the-cache"):
        for step in range(3):
            reader.step(step)
    reader.close()


# -- the journal of worker groups -----------------------------------------------------------------


def test_the_journal_records_each_restart_with_the_steps_and_time_lost() -> None:
    now = [100.0]
    journal = Journal(clock=lambda: now[0])
    group = journal.begin(2, 0)
    for step in range(1, 8):
        now[0] += 1.0
        journal.step(group, step)  # 2 workers reach step 7 at t=107
    now[0] = 130.0
    shrunk = journal.begin(1, 6)  # a node lost: 1 worker resumes from the checkpoint of step 6
    journal.step(group, 8)  # a late report of the replaced group counts for nothing
    now[0] = 135.0
    journal.step(shrunk, 7)  # back at step 7 at t=135: 28 s lost
    now[0] = 140.0
    journal.step(shrunk, 8)
    now[0] = 160.0
    journal.begin(2, 8)  # room for 2 again, at the checkpoint of step 8: nothing to replay
    record = journal.record()
    assert record["sizes"] == [2, 1, 2]
    first, second = record["restarts"]
    assert (first["from_workers"], first["to_workers"], first["from_step"], first["resumed_step"]) == (2, 1, 7, 6)
    assert first["steps_lost"] == 1 and first["seconds_lost"] == 28.0
    assert (second["from_workers"], second["to_workers"], second["steps_lost"], second["seconds_lost"]) == \
        (1, 2, 0, 20.0)
    assert describe(record) == "2 -> 1 -> 2 (2 resizes, 2 restarts); 1 step and 48 s lost to them"
    assert describe(Journal().record()) is None

    from ray_ltx.train.driver import TrainResult, format_summary

    result = TrainResult("/out", 8, 0.5, "/out/ray/train/checkpoint_00000008", None, None, workers=record)
    assert "  workers:     2 -> 1 -> 2 (2 resizes, 2 restarts); 1 step and 48 s lost to them" in \
        format_summary(build_config({"num_workers": "1:2"}), result).splitlines()

    class Recorder:  # the two Tracker calls the driver's end of run makes for the journal
        def __init__(self) -> None:
            self.tables: dict[str, list] = {}
            self.tags: dict[str, str] = {}

        def log_table(self, rows: list, artifact_file: str) -> None:
            self.tables[artifact_file] = rows

        def set_tags(self, tags: dict[str, str]) -> None:
            self.tags.update(tags)

    tracker = Recorder()
    log_to_tracker(tracker, record)
    assert tracker.tables == {"elastic/resizes.json": record["restarts"]}
    assert sorted(tracker.tags) == ["resize.1", "resize.2"]
    assert "at step 7: 2 -> 1 workers, resumed from step 6, 1 steps and 28.0 s lost" in tracker.tags["resize.1"]
    quiet = Recorder()
    log_to_tracker(quiet, Journal().record())
    assert quiet.tables == {} and quiet.tags == {}, "a run that never restarted records nothing"


# -- settings -------------------------------------------------------------------------------------


@pytest.mark.parametrize("value,expected", [(4, 4), ("4", 4), ("1:4", (1, 4)), ([2, 4], (2, 4)), ("3:3", 3)])
def test_num_workers_takes_a_size_or_a_range(value, expected) -> None:
    config = build_config({"num_workers": value})
    assert config.distributed.num_workers == expected
    assert build_config(config.to_dict()).distributed.num_workers == expected, "the resolved config reloads"
    assert config.distributed.failures_allowed == (10 if isinstance(expected, tuple) else 0)


def test_num_workers_from_yaml_and_the_command_line(tmp_path: Path) -> None:
    from ray_ltx.cli import build_parser, config_from_args

    (tmp_path / "run.yaml").write_text("num_workers: 1:4\nmax_failures: 2\n")  # not YAML 1.1's base-60 64
    (tmp_path / "list.yaml").write_text("distributed:\n  num_workers: [2, 4]\n")
    parser = build_parser()
    config = config_from_args(parser.parse_args(["train", "--config", str(tmp_path / "run.yaml")]))
    assert config.distributed.num_workers == (1, 4) and config.distributed.failures_allowed == 2
    config = config_from_args(parser.parse_args(["train", "--config", str(tmp_path / "list.yaml")]))
    assert (config.distributed.min_workers, config.distributed.max_workers) == (2, 4)
    config = config_from_args(parser.parse_args(["train", "--num_workers", "2:8"]))
    assert config.distributed.num_workers == (2, 8) and config.to_dict()["distributed"]["num_workers"] == "2:8"
    assert "num_workers: '2:8'" in config.to_yaml()


@pytest.mark.parametrize("overrides,message", [
    ({"num_workers": "4:2"}, "MIN 4 is above MAX 2: write MIN:MAX with MIN <= MAX, e.g. 2:4"),
    ({"num_workers": "0:2"}, "at least 1 worker: MIN must be 1 or more"),
    ({"num_workers": 0}, "at least 1 worker"),
    ({"num_workers": "two"}, "MIN:MAX for an elastic run"),
    ({"num_workers": [1, 2, 3]}, "MIN:MAX for an elastic run"),
    ({"num_workers": "1:2", "backend": "deepspeed"},
     "a DeepSpeed ZeRO checkpoint loads only at the size that wrote it. Use --backend ddp"),
])
def test_bad_ranges_are_refused_before_any_work(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match="num_workers") as error:
        build_config(overrides)
    assert message in str(error.value)


def test_help_says_what_a_range_does_and_which_backends_take_it() -> None:
    from ray_ltx.config import field_help

    assert "MIN:MAX" in field_help("num_workers") and "--backend ddp (or fsdp) only" in field_help("num_workers")
    assert "a fixed num_workers only" in field_help("backend")
    assert "batch_size x gradient_accumulation_steps x MAX" in field_help("num_workers")


def test_a_checkpoint_loads_at_another_size_only_where_the_backend_reshards() -> None:
    from ray_ltx.errors import CheckpointError
    from ray_ltx.train.checkpoint import TrainState, check_compatible

    ddp = build_config({"num_workers": "1:2"})
    check_compatible(TrainState.for_config(ddp, 2, 10), ddp, 1, "ckpt")
    deepspeed = build_config({"num_workers": 1, "backend": "deepspeed"})
    with pytest.raises(CheckpointError, match="deepspeed checkpoint of 2 workers .it loads only at that size."):
        check_compatible(TrainState.for_config(build_config({"num_workers": 2, "backend": "deepspeed"}), 2, 10),
                         deepspeed, 1, "ckpt")


def test_sweep_trials_keep_the_range() -> None:
    from ray_ltx.tune.trial import trial_config

    base = build_config({"num_workers": "1:2", "output_dir": "/tmp/sweep"}).resolved().to_dict()
    config = trial_config(base, {"lr": 1e-3}, [], trial_id="t1", sweep_name="s")
    assert config.distributed.num_workers == (1, 2) and config.optimizer.lr == 1e-3


# -- slow: real training ----------------------------------------------------------------------------


def _records(directory: Path) -> list[dict]:
    import json

    return sorted((json.loads(line) for path in directory.glob("samples-rank*.jsonl")
                   for line in path.read_text().splitlines() if line.strip()), key=lambda r: r["time"])


def _final_steps(directory: Path) -> dict[int, list[dict]]:
    """Each step's records from its last execution (a group replaced mid-run leaves earlier, partial ones)."""
    by_step: dict[int, list[dict]] = {}
    for record in _records(directory):
        by_step.setdefault(record["step"], []).append(record)
    final = {}
    for step, records in by_step.items():
        world = records[-1]["world_size"]
        last = records[-world:]
        assert sorted(r["rank"] for r in last) == list(range(world)), (step, records)
        assert {r["world_size"] for r in last} == {world}, (step, records)
        final[step] = last
    return final


def _check_each_micro_batch_once(final: dict[int, list[dict]], per_step: int, train_steps: int,
                                 samples: set[str]) -> None:
    assert sorted(final) == list(range(1, train_steps + 1)), "the step count runs on without gap or repeat"
    epochs: dict[int, list[str]] = {}
    for step, records in final.items():
        trained = sorted(index for r in records for index in r["micro_batches"])
        assert trained == list(range((step - 1) * per_step, step * per_step)), (step, records)
        for record in records:
            for epoch, sample in zip(record["epochs"], record["samples"], strict=True):  # batch_size 1
                epochs.setdefault(epoch, []).append(sample)
    complete = [epoch for epoch, trained in epochs.items() if len(trained) >= len(samples)]
    assert complete, epochs
    for epoch in complete:
        assert sorted(epochs[epoch]) == sorted(samples), f"epoch {epoch} trained {sorted(epochs[epoch])}"


def _history(uri: str, run_id: str, key: str) -> dict[int, list[float]]:
    from mlflow.tracking import MlflowClient

    values: dict[int, list[float]] = {}
    for metric in sorted(MlflowClient(uri).get_metric_history(run_id, key), key=lambda m: m.timestamp):
        values.setdefault(metric.step, []).append(metric.value)
    return values


@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")
def test_an_elastic_run_with_room_for_min_starts_at_once_and_trains_like_a_fixed_one(
        tiny_model: Path, sample_data: Path, shared_cache: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """1:2 on a node where one worker fits (5 of 8 CPUs each) starts with 1 worker, which trains each step's 2
    micro-batches itself: the same samples, noise and loss per step as 2 fixed workers."""
    from ray_ltx.data.cache import LatentCache
    from ray_ltx.train.driver import train

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    runs = {}
    for name, overrides in (("fixed", {"num_workers": 2}), ("elastic", {"num_workers": "1:2", "cpus_per_worker": 5})):
        monkeypatch.setenv("RAY_LTX_SAMPLE_LOG", str(tmp_path / name / "samples"))
        runs[name] = train(base_config(tiny_model, sample_data, tmp_path / name / "out", train_steps=4,
                                       checkpointing_steps=2, report_to="mlflow", mlflow_tracking_uri=uri,
                                       cache_dir=str(shared_cache), **overrides), quiet=True)
    elastic = runs["elastic"]
    assert elastic.workers == {"sizes": [1], "restarts": []}, "it started with what fits, without waiting for 2"
    assert _history(uri, elastic.mlflow_run_id, "world_size") == {step: [1.0] for step in range(1, 5)}
    assert elastic.training_config["train batch size"] == 2, "the global batch is that of MAX workers"
    samples = set(LatentCache.open(str(shared_cache)).sample_ids())
    final = {name: _final_steps(tmp_path / name / "samples") for name in runs}
    for name in runs:
        _check_each_micro_batch_once(final[name], 2, 4, samples)
    assert [sorted(s for r in final["elastic"][step] for s in r["samples"]) for step in range(1, 5)] == \
        [sorted(s for r in final["fixed"][step] for s in r["samples"]) for step in range(1, 5)]
    fixed_loss = _history(uri, runs["fixed"].mlflow_run_id, "loss")
    elastic_loss = _history(uri, elastic.mlflow_run_id, "loss")
    assert sorted(elastic_loss) == [1, 2, 3, 4]
    for step in range(1, 5):
        assert elastic_loss[step][0] == pytest.approx(fixed_loss[step][0], rel=1e-4), (step, fixed_loss, elastic_loss)


@pytest.fixture(scope="module")
def nodes():
    """A local multi-node Ray cluster: a head for the driver, trainer nodes added by the test."""
    from test_cluster import LocalRayCluster

    with LocalRayCluster.running(num_cpus=2) as cluster:
        yield cluster


def _join(nodes, name: str):
    """A trainer node (one worker fits) that has started; `ray start` gives up when its raylet takes over 30 s to
    register, as it may on a loaded machine: then try again."""
    import time

    for _ in range(3):
        process = nodes.add_node(name, 1, {"trainer_node": 1})
        while process.poll() is None and "Ray runtime started." not in nodes.node_log(name):
            time.sleep(0.5)
        if process.poll() is None:
            return process
        nodes.stop_node(process)
    raise RuntimeError(f"`ray start` of {name} failed 3 times:\n{nodes.node_log(name)[-3000:]}")


def _wait(condition, what: str, driver, log: Path, timeout: float = 600.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        assert driver.poll() is None, f"the run ended ({driver.returncode}) before {what}:\n{log.read_text()[-5000:]}"
        assert time.monotonic() < deadline, f"no {what} after {timeout:.0f} s:\n{log.read_text()[-5000:]}"
        time.sleep(0.5)


@pytest.mark.full
@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_a_lost_node_shrinks_the_run_and_a_new_one_grows_it_back(
        nodes, tiny_model: Path, sample_data: Path, shared_cache: Path, tmp_path: Path) -> None:
    """2 workers on 2 nodes; one node stopped mid-run: training goes on with 1; a node added: back to 2."""
    import subprocess
    import sys

    from diffusers import LTXPipeline
    from mlflow.tracking import MlflowClient

    from ray_ltx.data.cache import LatentCache

    first, second = _join(nodes, "node-a"), _join(nodes, "node-b")
    nodes.wait_ready({"trainer_node": 2}, timeout=600)
    # Ray Train notices a new node within about a minute (its view of the cluster refreshes every 20 s): the run
    # must still be going by then. Each step makes 4 passes at 1 worker (2 micro-batches x MAX 2).
    train_steps, samples_dir, out = 240, tmp_path / "samples", tmp_path / "out"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    flags = ["--pretrained_model_name_or_path", str(tiny_model), "--data_root", str(sample_data),
             "--cache_dir", str(shared_cache), "--video_resolution_buckets", "9x64x96", "17x64x96",
             "--id_token", "BW_STYLE", "--transformer_dtype", "fp32", "--vae_dtype", "fp32",
             "--text_encoder_dtype", "fp32", "--rank", "8", "--lora_alpha", "8", "--lr", "1e-3",
             "--num_workers", "1:2", "--resources_per_worker", '{"trainer_node": 1}',
             "--gradient_accumulation_steps", "2", "--elastic_resize_interval_s", "5",
             "--train_steps", str(train_steps), "--checkpointing_steps", "5",
             "--output_dir", str(out), "--mlflow_tracking_uri", uri, "--no-log_system_metrics",
             "--ray_address", nodes.gcs]
    # Ray Train's view of the cluster lags a lost node by up to 20 s: a restart at the old size waits this long
    # before it tries again (60 s by default).
    env = {**nodes.env, "RAY_LTX_SAMPLE_LOG": str(samples_dir), "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "20"}
    log = tmp_path / "driver.log"
    with open(log, "w") as output:
        driver = subprocess.Popen([sys.executable, "-m", "ray_ltx", "train", *flags], env=env, stdout=output,
                                  stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        def trained_at(world: int, steps: int, after: float = 0.0) -> bool:
            return sum(r["rank"] == 0 and r["world_size"] == world and r["time"] > after
                       for r in _records(samples_dir)) >= steps

        _wait(lambda: trained_at(2, 5), "5 steps on 2 workers", driver, log)
        from ray_ltx.train.checkpoint import latest_checkpoint

        # the node goes once a checkpoint of the 2-worker group is complete, so the restart resumes from it
        _wait(lambda: latest_checkpoint(str(out / "ray" / "train")) is not None, "a checkpoint on 2 workers", driver,
              log)
        import time

        stopped_at = time.time()
        nodes.stop_node(second)
        _wait(lambda: trained_at(1, 1, stopped_at), "a step on 1 worker after the node was stopped", driver, log)
        added_at = time.time()
        _join(nodes, "node-c")
        _wait(lambda: trained_at(2, 2, added_at), "2 steps on 2 workers after a node was added", driver, log)
        assert driver.wait(timeout=1200) == 0, log.read_text()[-5000:]
    finally:
        if driver.poll() is None:
            driver.kill()
        for process in [first, *[p for name, p in nodes.nodes if name == "node-c"]]:
            nodes.stop_node(process)

    final = _final_steps(samples_dir)
    sizes = [final[step][0]["world_size"] for step in sorted(final)]
    changes = [size for i, size in enumerate(sizes) if i == 0 or size != sizes[i - 1]]
    assert changes == [2, 1, 2], sizes
    _check_each_micro_batch_once(final, 4, train_steps, set(LatentCache.open(str(shared_cache)).sample_ids()))

    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("ray-ltx").experiment_id])
    assert run.info.status == "FINISHED"
    losses = _history(uri, run.info.run_id, "loss")
    assert sorted(losses) == list(range(1, train_steps + 1))
    for step, values in losses.items():  # a step trained again after a restart, by another number of workers
        assert max(values) == pytest.approx(min(values), rel=1e-3), (step, values)
    world_sizes = _history(uri, run.info.run_id, "world_size")
    assert [values[-1] for _, values in sorted(world_sizes.items())] == sizes
    tags = run.data.tags
    assert " 2 -> 1 workers" in tags["resize.1"] and " 1 -> 2 workers" in tags["resize.2"], tags
    resizes = client.download_artifacts(run.info.run_id, "elastic/resizes.json", str(tmp_path))
    assert '"from_workers"' in Path(resizes).read_text()
    summary = log.read_text()
    assert "workers:     2 -> 1 -> 2 (2 resizes, 2 restarts)" in summary, summary[-3000:]
    LTXPipeline.from_pretrained(tiny_model).load_lora_weights(str(out))


def test_resuming_with_another_global_batch_says_the_samples_regroup(caplog) -> None:
    from ray_ltx.config import build_config
    from ray_ltx.train.checkpoint import TrainState, check_compatible

    made = build_config({"num_workers": "2:4", "gradient_accumulation_steps": 2})
    state = TrainState.for_config(made, 4, 100)
    assert state.micro_batches_per_step == 8
    with caplog.at_level("WARNING"):
        check_compatible(state, made, 4, "ckpt")
    assert "micro-batches per step" not in caplog.text
    check_compatible(state, build_config({"num_workers": "2:6", "gradient_accumulation_steps": 2}), 6, "ckpt")
    assert "trained 8 micro-batches per step" in caplog.text and "this run trains 12" in caplog.text
