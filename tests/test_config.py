"""The typed config: YAML, flags (the finetrainers names verbatim), validation before any work."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ray_ltx.cli import build_parser, config_from_args
from ray_ltx.config import build_config, load_config
from ray_ltx.errors import ConfigError

# The seed document's finetrainers command, flag for flag.
SEED_FLAGS = """
--model_name ltx_video --pretrained_model_name_or_path Lightricks/LTX-Video
--data_root {data} --video_column videos.txt --caption_column prompts.txt --id_token BW_STYLE
--video_resolution_buckets 49x512x768 --caption_dropout_p 0.05
--dataloader_num_workers 0
--flow_weighting_scheme logit_normal
--training_type lora --seed 42 --batch_size 1 --train_steps 3000 --rank 128 --lora_alpha 128
--target_modules to_q to_k to_v to_out.0 --gradient_accumulation_steps 4 --gradient_checkpointing
--checkpointing_steps 500 --checkpointing_limit 2 --enable_slicing --enable_tiling
--optimizer adamw --lr 3e-5 --lr_scheduler constant_with_warmup --lr_warmup_steps 100 --lr_num_cycles 1
--beta1 0.9 --beta2 0.95 --weight_decay 1e-4 --epsilon 1e-8 --max_grad_norm 1.0
--tracker_name finetrainers-ltxv --output_dir {out} --nccl_timeout 1800 --report_to wandb
--layerwise_upcasting_modules transformer --transformer_dtype bf16
"""


def parse(argv: list[str]):
    args = build_parser().parse_args(argv)
    return config_from_args(args)


def test_seed_flags_parse_verbatim(tmp_path: Path) -> None:
    argv = ["train", *SEED_FLAGS.format(data=tmp_path, out=tmp_path / "out").split()]
    config = parse(argv)
    assert config.training.rank == 128 and config.training.lora_alpha == 128
    assert config.training.target_modules == ["to_q", "to_k", "to_v", "to_out.0"]
    assert str(config.data.video_resolution_buckets[0]) == "49x512x768"
    assert config.diffusion.flow_weighting_scheme == "logit_normal"
    assert config.optimizer.lr_scheduler == "constant_with_warmup" and config.optimizer.beta2 == 0.95
    assert config.training.gradient_checkpointing and config.training.enable_tiling
    assert config.model.layerwise_upcasting_modules == ["transformer"]
    assert config.tracking.report_to == "wandb" and config.tracking.tracker_name == "finetrainers-ltxv"


def test_yaml_flat_and_sectioned_with_flag_override(tmp_path: Path) -> None:
    flat = tmp_path / "flat.yaml"
    flat.write_text(yaml.safe_dump({"rank": 32, "lr": 2e-4, "video_resolution_buckets": "49x512x768 17x256x256"}))
    sectioned = tmp_path / "sectioned.yaml"
    sectioned.write_text(yaml.safe_dump({"training": {"rank": 32}, "optimizer": {"lr": 2e-4}}))
    a, b = load_config(flat), load_config(sectioned)
    assert a.training.rank == b.training.rank == 32 and a.optimizer.lr == b.optimizer.lr == 2e-4
    assert [str(x) for x in a.data.video_resolution_buckets] == ["49x512x768", "17x256x256"]
    overridden = parse(["train", "--config", str(flat), "--rank", "64"])
    assert overridden.training.rank == 64 and overridden.optimizer.lr == 2e-4


def test_resolved_config_round_trips_and_flattens(tmp_path: Path) -> None:
    config = build_config({"rank": 16, "output_dir": str(tmp_path)})
    again = load_config_from_text(tmp_path, config.to_yaml())
    assert again == config
    flat = config.flatten()
    assert flat["training.rank"] == "16" and all(isinstance(v, str) for v in flat.values())


def load_config_from_text(tmp_path: Path, text: str):
    path = tmp_path / "resolved.yaml"
    path.write_text(text)
    return load_config(path)


@pytest.mark.parametrize(
    ("values", "names"),
    [
        ({"video_resolution_buckets": ["48x512x768"]}, ["48x512x768", "8k+1"]),
        ({"video_resolution_buckets": ["49x500x768"]}, ["49x500x768", "32"]),
        ({"video_resolution_buckets": ["49by512"]}, ["49by512", "FRAMESxHEIGHTxWIDTH"]),
        ({"rank": 0}, ["rank", "0"]),
        ({"rank": "many"}, ["rank", "many"]),
        ({"lr_scheduler": "cosine_annealing"}, ["lr_scheduler", "cosine_annealing"]),
        ({"training_type": "full-finetune", "rank": 32}, ["full-finetune", "rank"]),
        ({"caption_dropout_p": 1.5}, ["caption_dropout_p", "1.5"]),
        ({"optimizer": "sgd"}, ["optimizer", "sgd"]),
        ({"offload_optimizer": True}, ["offload_optimizer", "deepspeed"]),
        ({"frame_sampling": "fps"}, ["sample_fps"]),
    ],
)
def test_invalid_values_name_the_field_and_the_valid_form(values: dict, names: list[str]) -> None:
    with pytest.raises(ConfigError) as error:
        build_config(values)
    for name in names:
        assert name in str(error.value)


def test_unknown_key_suggests_the_right_one(tmp_path: Path) -> None:
    path = tmp_path / "typo.yaml"
    path.write_text("rnak: 4\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert "rnak" in str(error.value) and "rank" in str(error.value)
    assert str(path) in str(error.value)


def test_cli_prints_the_error_without_traceback_and_exits_2(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "ray_ltx", "train", "--rank", "0", "--output_dir", str(tmp_path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "rank" in result.stderr and "Traceback" not in result.stderr


def test_missing_data_root_is_rejected_before_ray_starts(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "ray_ltx", "preprocess", "--data_root", str(tmp_path / "nope"),
                             "--output_dir", str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 3, result.stderr
    assert "nope" in result.stderr and "Traceback" not in result.stderr
    assert "Started a local Ray" not in result.stderr + result.stdout


def test_console_script_and_module_both_work() -> None:
    script = Path(sys.executable).parent / "ray-ltx"  # installed beside the interpreter running the tests
    for command in ([str(script), "--help"], [sys.executable, "-m", "ray_ltx", "--help"]):
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0 and "preprocess" in result.stdout
