"""The ``ray-ltx`` command line (also ``python -m ray_ltx``, which ``ray job submit`` runs).

Config-taking commands get one flag per config field, named as the field (the finetrainers
names), with the help text from :mod:`ray_ltx.config`. Heavy imports (torch, ray, diffusers)
happen inside the commands so that ``--help`` and config errors are instant.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ray_ltx import __version__
from ray_ltx.config import FIELD_SECTION, SECTIONS, Config, field_help, load_config
from ray_ltx.errors import UserError

log = logging.getLogger("ray_ltx")


def _field_info(name: str) -> Any:
    section = FIELD_SECTION[name]
    cls = Config if section is None else SECTIONS[section]
    return cls.model_fields[name]


def _type_args(annotation: Any) -> tuple[Any, set[Any]]:
    """Strip Optional/Annotated and return (base annotation, set of origins seen)."""
    origins: set[Any] = set()
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            annotation = args[0]
        else:
            origins.add(origin)
            return annotation, origins


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One ``--<field>`` flag per config leaf; unset flags stay out of the overrides."""
    parser.add_argument("--config", help="YAML config file (sections or flat finetrainers names)")
    groups: dict[str | None, argparse._ArgumentGroup] = {}
    defaults = Config().to_dict()
    for name, section in FIELD_SECTION.items():
        group = groups.get(section) or groups.setdefault(
            section, parser.add_argument_group(f"{section or 'run'} settings")
        )
        info = _field_info(name)
        annotation, _ = _type_args(info.annotation)
        origin = typing.get_origin(annotation)
        default = defaults[section][name] if section else defaults[name]
        values = _literal_values(annotation)
        choices = f" One of: {', '.join(str(v) for v in values)}." if values else ""
        help_text = f"{field_help(name)}{choices} [default: {_show(default)}]"
        kwargs: dict[str, Any] = {"default": argparse.SUPPRESS, "help": help_text, "dest": name}
        if annotation is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif origin is list:
            kwargs["nargs"] = "+"
            kwargs["metavar"] = name.upper()
        elif origin is dict:
            kwargs["type"] = _json_mapping(name)
            kwargs["metavar"] = "JSON"
        else:
            kwargs["metavar"] = name.upper()
        group.add_argument(f"--{name}", **kwargs)


def _literal_values(annotation: Any) -> tuple[Any, ...]:
    """The allowed values of a Literal (or a list of Literals) field, for the help text."""
    if typing.get_origin(annotation) is list:
        annotation = typing.get_args(annotation)[0]
    return typing.get_args(annotation) if typing.get_origin(annotation) is typing.Literal else ()


def _show(value: Any) -> str:
    if isinstance(value, list):
        return " ".join(str(v) for v in value) or "none"
    return "none" if value is None else str(value)


def _json_mapping(name: str) -> Callable[[str], dict[str, Any]]:
    def parse(text: str) -> dict[str, Any]:
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            raise argparse.ArgumentTypeError(f'--{name} takes a JSON object, e.g. \'{{"GPU": 1}}\'') from None
        if not isinstance(value, dict):
            raise argparse.ArgumentTypeError(f'--{name} takes a JSON object, e.g. \'{{"GPU": 1}}\'')
        return value

    return parse


def config_from_args(args: argparse.Namespace) -> Config:
    overrides = {name: value for name, value in vars(args).items() if name in FIELD_SECTION}
    return load_config(args.config, overrides)


# -- commands ---------------------------------------------------------------------------------


def cmd_config(args: argparse.Namespace) -> int:
    print(config_from_args(args).to_yaml(), end="")
    return 0


def cmd_preprocess(args: argparse.Namespace) -> int:
    from ray_ltx.data.pipeline import preprocess

    config = config_from_args(args)
    preprocess(config)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from ray_ltx.train.driver import train

    config = config_from_args(args)
    train(config)
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from ray_ltx.tune import run_sweep

    config = config_from_args(args)
    run_sweep(config, args.sweep, resume=args.resume)
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from ray_ltx.generate import generate_from_args

    generate_from_args(args)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from ray_ltx.export import export

    out = export(args.source, args.out, step=args.step, model=args.model)
    print(f"wrote the weights of {args.source}{f' at step {args.step}' if args.step else ''} to {out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from ray_ltx.demo import run_demo

    run_demo(Path(args.workdir), train_steps=args.train_steps, num_workers=args.num_workers)
    return 0


def cmd_make_tiny_model(args: argparse.Namespace) -> int:
    from ray_ltx.model.tiny import write_pipeline

    path = write_pipeline(args.out, size="full" if args.full_size else "tiny", seed=args.seed, version=args.version,
                          family=args.family, overwrite=args.overwrite)
    model = "LTX-2" if args.family == "ltx2" else f"LTX-Video {args.version or '0.9.0'}"
    print(f"wrote a {'full-size' if args.full_size else 'tiny'} {model} pipeline (random weights) to {path}")
    return 0


def cmd_make_sample_data(args: argparse.Namespace) -> int:
    from ray_ltx.data.samples import write_sample_dataset

    path = write_sample_dataset(args.out, num_clips=args.num_clips, seed=args.seed)
    print(f"wrote {args.num_clips} sample clips (finetrainers layout: prompts.txt + videos.txt) to {path}")
    return 0


def add_generate_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="Lightricks/LTX-Video",
                        help="Hub id, pipeline folder or single-file .safetensors of the base model [default: %(default)s]")
    parser.add_argument("--base_model", default=None, help="with a single-file --model: the diffusers folder or Hub "
                        "id of the same version for the other components [default: the detected version's repo]")
    parser.add_argument("--model_name", default="auto", choices=["auto", "ltx_video", "ltx2"],
                        help="model family [default: %(default)s, detected from the checkpoint]")
    parser.add_argument("--variant", default="auto", choices=["auto", "dev", "distilled"],
                        help="dev or distilled checkpoint (sets the default steps and guidance) [default: %(default)s]")
    parser.add_argument("--lora", help="LoRA: a ray-ltx output dir, a safetensors file, an MLflow run's weights "
                        "(runs:/<run_id>/weights) or a registered model (models:/NAME/latest, models:/NAME/<version>; "
                        "see train --register_model)")
    parser.add_argument("--mlflow_tracking_uri", default=None, help="the MLflow store --lora runs:/ or models:/ "
                        "is read from [default: MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlruns/mlflow.db]")
    parser.add_argument("--lora_scale", type=float, default=1.0, help="LoRA strength [default: %(default)s]")
    parser.add_argument("--prompt", action="append", help="prompt (repeat for several videos)")
    parser.add_argument("--prompts_file", help="file with one prompt a line: batch mode, spread over GPUs")
    parser.add_argument("--image", help="image-to-video: the first frame (scaled and centre-cropped to the size)")
    parser.add_argument("--negative_prompt", default="", help="negative prompt")
    parser.add_argument("--num_frames", type=int, default=49, help="frames, 8k+1 [default: %(default)s]")
    parser.add_argument("--height", type=int, default=512, help="multiple of 32 [default: %(default)s]")
    parser.add_argument("--width", type=int, default=768, help="multiple of 32 [default: %(default)s]")
    parser.add_argument("--steps", type=int, default=None,
                        help="denoising steps [default: the checkpoint's: 30, a distilled one 8]")
    parser.add_argument("--guidance_scale", type=float, default=None,
                        help="classifier-free guidance [default: the checkpoint's: 3.0, a distilled one 1.0]")
    parser.add_argument("--seed", type=int, default=0, help="[default: %(default)s]")
    parser.add_argument("--fps", type=int, default=24, help="frame rate of the written mp4 [default: %(default)s]")
    parser.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default=None,
                        help="[default: bf16 on GPU, fp32 on CPU]")
    parser.add_argument("--out", default="video.mp4", help="output mp4 (batch mode: output directory) [default: %(default)s]")
    parser.add_argument("--num_gpus", type=int, default=None, help="batch mode: GPUs to spread prompts over "
                        "[default: all the cluster has]")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ray-ltx",
        description="Finetune LTX-Video (LoRA or full) on a Ray cluster.",
    )
    parser.add_argument("--version", action="version", version=f"ray-ltx {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, handler: Callable[[argparse.Namespace], int], help_text: str, config: bool = False,
                usage_extra: str = ""):
        usage = f"ray-ltx {name} {usage_extra}[--config FILE] [--SETTING VALUE ...]" if config else None
        sub = commands.add_parser(name, help=help_text, description=help_text, usage=usage)
        sub.set_defaults(handler=handler)
        if config:
            add_config_flags(sub)
        return sub

    command("preprocess", cmd_preprocess, "Decode, bucket and encode a dataset into the latent cache.", True)
    command("train", cmd_train, "Train a LoRA or the full transformer (preprocesses first if needed).", True)
    tune = command("tune", cmd_tune, "Sweep config fields (e.g. rank, lr) with Ray Tune.", True,
                   usage_extra="--sweep SWEEP.yaml [--resume] ")
    tune.add_argument("--sweep", required=True, help="sweep YAML (see tuning/)")
    tune.add_argument("--resume", action="store_true", help="resume an interrupted sweep of the same name")
    command("config", cmd_config, "Print the resolved configuration as YAML.", True)

    generate = command("generate", cmd_generate, "Generate videos with a base model and optional LoRA.")
    add_generate_flags(generate)

    export = command("export", cmd_export, "Export the weights of a run or of one of its checkpoints (LoRA: diffusers "
                     "and ComfyUI files; full finetune: transformer/).")
    export.add_argument("source", help="a run's output_dir, a checkpoint_<step> directory, or runs:/<run_id>/weights")
    export.add_argument("--out", required=True, help="directory to write the weights to")
    export.add_argument("--step", type=int, default=None, help="with an output_dir: the checkpoint of this step "
                        "[default: the final weights]")
    export.add_argument("--model", default=None, help="full finetune from a checkpoint: the base model it was "
                        "trained from")

    demo = command("demo", cmd_demo, "Run the whole product end to end on a tiny model and sample videos.")
    demo.add_argument("--workdir", default="ray-ltx-demo", help="where the demo writes everything")
    demo.add_argument("--train_steps", type=int, default=20, help="LoRA training steps")
    demo.add_argument("--num_workers", type=int, default=2, help="Ray Train workers")

    tiny = command("make-tiny-model", cmd_make_tiny_model, "Write a random-weight LTX-Video pipeline directory.")
    tiny.add_argument("--out", required=True, help="output directory")
    tiny.add_argument("--full-size", action="store_true", help="diffusers default (full-size) configs")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument("--family", default="ltx_video", choices=["ltx_video", "ltx2"],
                      help="model family [default: %(default)s]")
    tiny.add_argument("--version", default=None, choices=["0.9.0", "0.9.1", "0.9.5", "0.9.7-13b", "2.0"],
                      help="which release's configuration [default: 0.9.0, LTX-2: 2.0]")
    tiny.add_argument("--overwrite", action="store_true",
                      help="replace --out even if it holds files make-tiny-model did not write")

    samples = command("make-sample-data", cmd_make_sample_data, "Write sample videos in the finetrainers layout.")
    samples.add_argument("--out", required=True, help="output directory")
    samples.add_argument("--num_clips", type=int, default=8)
    samples.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from ray_ltx.logs import setup_logging

    setup_logging(args.verbose)
    try:
        return args.handler(args)
    except UserError as error:
        print(f"ray-ltx {args.command}: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print(f"ray-ltx {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

