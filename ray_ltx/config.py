"""The one typed configuration of ray-ltx: every default and every help text lives here.

The tree has sections (model, data, diffusion, training, optimizer, validation, distributed,
tracking). Every leaf has a name unique across the tree, so the finetrainers flags
(``--rank 128``, ``--video_resolution_buckets 49x512x768``, ...) map onto it verbatim, and a
YAML file may use sections or the same flat names. Precedence: defaults < YAML < flags.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    field_validator,
    model_validator,
)

from ray_ltx.buckets import FRAME_MULTIPLE, SIDE_MULTIPLE, Bucket
from ray_ltx.errors import ConfigError
from ray_ltx.storage import join

DEFAULT_TARGET_MODULES = ["to_q", "to_k", "to_v", "to_out.0"]
OPTIMIZER_ALIASES = {"adamw-bnb-8bit": "adamw8bit"}  # finetrainers' names for ray-ltx's optimizers
LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")


def _parse_bucket(value: Any) -> Bucket:
    return value if isinstance(value, Bucket) else Bucket.parse(str(value))


def _split_words(value: Any) -> Any:
    """Accept ``"a b c"`` where a list is expected (a YAML string or a single flag value)."""
    return value.split() if isinstance(value, str) else value


BucketField = Annotated[Bucket, BeforeValidator(_parse_bucket), PlainSerializer(str, return_type=str)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=True)


class ModelConfig(_Section):
    model_name: Literal["auto", "ltx_video", "ltx2"] = "auto"
    """Model family: 'auto' detects it from the checkpoint (model_index.json, the transformer config or the
    single file's tensors); 'ltx_video' is LTX-Video 0.9.x (finetrainers' name), 'ltx2' LTX-2."""
    pretrained_model_name_or_path: str = "Lightricks/LTX-Video"
    """Hub id, local diffusers pipeline folder, or a single-file .safetensors checkpoint (e.g.
    ltxv-13b-0.9.7-dev.safetensors: its transformer; the other components come from base_model_name_or_path)."""
    base_model_name_or_path: str | None = None
    """With a single-file checkpoint: the diffusers folder or Hub id of the same version that supplies the VAE, text
    encoder, tokenizer, scheduler and configs; default: the Lightricks repo of the detected version."""
    model_variant: Literal["auto", "dev", "distilled"] = "auto"
    """dev or distilled checkpoint (distilled: validation and generate default to 8 steps without guidance); 'auto'
    reads it from the checkpoint's name."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) of the pretrained model."""
    transformer_dtype: Literal["bf16", "fp16", "fp32"] = "bf16"
    """Dtype the transformer computes in (and stores frozen weights in, unless upcasting is on)."""
    vae_dtype: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    """Dtype of the VAE when encoding latents and decoding validation videos; auto: bf16 on GPUs, fp32 on CPUs
    (where bf16 3D convolutions are ~100x slower)."""
    text_encoder_dtype: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    """Dtype of the text encoder when encoding prompts; auto: bf16 on GPUs, fp32 on CPUs."""
    layerwise_upcasting_modules: list[Literal["transformer"]] = Field(default_factory=list)
    """Modules whose frozen weights are stored in float8 and upcast per layer for compute."""
    layerwise_upcasting_storage_dtype: Literal["float8_e4m3fn", "float8_e5m2"] = "float8_e4m3fn"
    """Storage dtype of layerwise-upcast weights."""


class DataConfig(_Section):
    data_root: str | None = None
    """Dataset root: a local directory or a pyarrow/fsspec URI (s3://, gs://, ...)."""
    dataset_file: str | None = None
    """CSV, JSON or JSONL metadata file with caption and path columns (relative to data_root; without data_root,
    the paths in it are relative to its folder, as in LTX-Video-Trainer's dataset.json)."""
    dataset_config: str | None = None
    """finetrainers' dataset config: a JSON file {"datasets": [...]} listing one or more datasets (data_root or
    dataset_file, dataset_type, id_token, resolution buckets, ...), used instead of data_root; see docs/datasets.md."""
    dataset_layout: Literal["auto", "finetrainers", "metadata", "folder"] = "auto"
    """How the dataset is laid out; 'auto' detects it from data_root."""
    video_column: str = "videos.txt"
    """Finetrainers layout: file listing one video path a line. Metadata layout: the path column."""
    caption_column: str = "prompts.txt"
    """Finetrainers layout: file listing one caption a line. Metadata layout: the caption column."""
    id_token: str | None = None
    """Token prepended to every caption before encoding (e.g. a style trigger word)."""
    video_resolution_buckets: Annotated[list[BucketField], BeforeValidator(_split_words)] = Field(
        default_factory=lambda: [Bucket(49, 512, 768)], min_length=1
    )
    """Target shapes FRAMESxHEIGHTxWIDTH (frames 8k+1, sides multiples of 32); a bucket of 1 frame takes images."""
    frame_sampling: Literal["uniform", "fps", "stride"] = "uniform"
    """How frames are picked from a clip: spread evenly, resampled to sample_fps, or every frame_stride-th."""
    sample_fps: float | None = None
    """Frame rate to resample clips to when frame_sampling is 'fps'."""
    frame_stride: int | None = Field(default=None, gt=0)
    """Take every N-th frame when frame_sampling is 'stride'."""
    max_sequence_length: int | None = Field(default=None, gt=0)
    """Text tokens per prompt (what the pipeline pads to); longer captions are truncated and counted in the
    preprocessing report. Default: the model family's (LTX-Video: 128 T5 tokens, LTX-2: 1024 Gemma tokens)."""
    audio: Literal["off", "on", "required"] = "off"
    """Clips' audio tracks (LTX-2): 'off' trains video only (the audio branch frozen); 'on' encodes each clip's audio
    with the audio VAE and trains audio and video jointly, a clip without an audio track video-only; 'required'
    skips clips without one (counted in the skip report)."""
    caption_dropout_p: float = Field(default=0.0, ge=0.0, le=1.0)
    """Probability of replacing a sample's prompt with the empty prompt during training."""
    dataloader_num_workers: int = Field(default=0, ge=0)
    """finetrainers' loader workers, accepted for its scripts: each training worker reads its own micro-batches
    from the cache, two steps ahead, in a background thread."""
    cache_dir: str | None = None
    """Latent cache location (local path or URI); default: <output_dir>/cache."""
    rebuild_cache: bool = False
    """Rebuild the cache when it was made for another model, bucket set, id token or sequence length."""
    decode_cpus: float = Field(default=1.0, gt=0)
    """CPUs reserved by each Ray Data decode task."""
    encode_batch_size: int = Field(default=4, gt=0)
    """Clips per VAE call (one shape per call); prompts are batched 4x this."""
    encode_actors: int | None = Field(default=None, gt=0)
    """Actors per encoder stage (VAE, T5; one model copy each); default: as many pairs as the cluster's GPUs
    hold at --encode_gpus each (2 per GPU with the default 0.25), 1 without GPUs."""
    encode_gpus: float | None = Field(default=None, ge=0)
    """GPUs per encoder actor; default: 0.25 when the cluster has GPUs (a VAE and a T5 actor pair twice per
    GPU, which keeps the GPU busy while the other waits on decode), else 0 (CPU actors)."""
    holdout_samples: int = Field(default=0, ge=0)
    """Cached samples held out of training for the validation loss (a good sweep metric)."""


class DiffusionConfig(_Section):
    flow_weighting_scheme: Literal["none", "sigma_sqrt", "logit_normal", "mode", "cosmap", "shifted_logit_normal"] = (
        "none")
    """How sigmas are drawn and the loss weighted: the SD3 flow-matching schemes, or LTX-Video-Trainer's
    shifted_logit_normal (logit-normal shifted by the clip's token count: 0.95 at 1024 tokens, 2.05 at 4096)."""
    flow_logit_mean: float = 0.0
    """Mean of the logit-normal sigma distribution."""
    flow_logit_std: float = Field(default=1.0, gt=0)
    """Standard deviation of the logit-normal sigma distribution."""
    flow_mode_scale: float = 1.29
    """Scale of the 'mode' sigma distribution."""
    flow_shift: float = Field(default=1.0, gt=0)
    """Shift applied to sampled sigmas: s*sigma / (1 + (s-1)*sigma)."""
    frame_rate: float = Field(default=25.0, gt=0)
    """Frame rate the rope interpolation scale assumes (as LTXPipeline's frame_rate)."""


class TrainingConfig(_Section):
    training_type: Literal["lora", "full-finetune"] = "lora"
    """Train LoRA adapters (PEFT) or every transformer weight."""
    seed: int = 42
    """Seed for weights init, data order, noise and sigmas."""
    batch_size: int = Field(default=1, gt=0)
    """Samples per micro-batch per worker; every micro-batch holds one bucket."""
    train_steps: int = Field(default=1000, gt=0)
    """Optimizer steps to train."""
    rank: int = Field(default=64, gt=0)
    """LoRA rank."""
    lora_alpha: float = Field(default=64, gt=0)
    """LoRA alpha (scale = lora_alpha / rank)."""
    target_modules: Annotated[list[str], BeforeValidator(_split_words)] = Field(
        default_factory=lambda: list(DEFAULT_TARGET_MODULES), min_length=1
    )
    """Transformer modules that get LoRA adapters."""
    gradient_accumulation_steps: int = Field(default=1, gt=0)
    """Micro-batches accumulated per optimizer step."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass to save memory."""
    checkpointing_steps: int = Field(default=500, gt=0)
    """Save a resumable checkpoint every N steps."""
    checkpointing_limit: int | None = Field(default=None, gt=0)
    """Keep at most N checkpoints (oldest removed); default keeps all."""
    resume_from_checkpoint: str | None = None
    """'latest' (the newest checkpoint of this output_dir, continuing its MLflow or W&B run) or a checkpoint
    directory to resume from (in a new run)."""
    overwrite_output_dir: bool = False
    """Allow starting a new run in an output_dir that holds another run (its outputs are replaced)."""
    enable_slicing: bool = False
    """VAE slicing when encoding latents and decoding validation videos."""
    enable_tiling: bool = False
    """VAE tiling when encoding latents and decoding validation videos."""
    compile: bool = False
    """torch.compile each transformer block (regional compilation)."""
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = "default"
    """torch.compile mode for --compile; reduce-overhead replays each block as a CUDA graph: fastest at small
    batches on GPU, where launching kernels bounds the step (costs some memory)."""
    first_frame_conditioning_p: float = Field(default=0.0, ge=0.0, le=1.0)
    """Image-to-video training: probability per sample that the first latent frame stays clean (sigma 0, left out
    of the loss), as the image-to-video and condition pipelines use it at inference."""
    nan_policy: Literal["stop", "skip"] = "stop"
    """On a NaN/inf loss or gradient: stop with a message naming the step and the last good checkpoint, or skip
    the step (no update) and count it; skipping needs --backend ddp or fsdp (DeepSpeed stops)."""
    max_skipped_steps: int = Field(default=10, ge=0)
    """With nan_policy=skip, stop after this many skipped steps."""


class OptimizerConfig(_Section):
    optimizer: Literal["adamw", "adam", "adamw_fused", "adamw8bit"] = "adamw"
    """Optimizer; adamw_fused uses torch's fused kernels (CUDA), adamw8bit needs bitsandbytes (finetrainers'
    adamw-bnb-8bit is accepted for it)."""
    lr: float = Field(default=1e-4, gt=0)
    """Peak learning rate."""
    lr_scheduler: Literal[LR_SCHEDULERS] = "constant"  # type: ignore[valid-type]
    """Learning-rate schedule after warmup."""
    lr_warmup_steps: int = Field(default=0, ge=0)
    """Linear warmup steps."""
    lr_num_cycles: int = Field(default=1, gt=0)
    """Hard restarts of cosine_with_restarts."""
    lr_power: float = Field(default=1.0, gt=0)
    """Power of the polynomial schedule."""
    beta1: float = Field(default=0.9, ge=0, lt=1)
    """Adam beta1."""
    beta2: float = Field(default=0.95, ge=0, lt=1)
    """Adam beta2."""
    weight_decay: float = Field(default=1e-4, ge=0)
    """Decoupled weight decay."""
    epsilon: float = Field(default=1e-8, gt=0)
    """Adam epsilon."""
    max_grad_norm: float = Field(default=1.0, ge=0)
    """Clip gradients to this global norm (0 disables clipping)."""

    @field_validator("optimizer", mode="before")
    @classmethod
    def _finetrainers_spelling(cls, value: Any) -> Any:
        return OPTIMIZER_ALIASES.get(value, value) if isinstance(value, str) else value


class ValidationConfig(_Section):
    validation_prompts: list[str] = Field(default_factory=list)
    """Prompts rendered to videos during training (inline, or a file given by validation_prompts_file)."""
    validation_prompts_file: str | None = None
    """File with one prompt a line, or JSON/YAML list of {prompt, height, width, num_frames}."""
    validation_dataset_file: str | None = None
    """finetrainers' validation file: CSV or JSON ({"data": [...]}) rows of caption and optional image_path,
    num_inference_steps, height, width, num_frames, frame_rate (empty: the validation_* defaults)."""
    validation_steps: int | None = Field(default=None, gt=0)
    """Render the validation prompts every N steps (and at the end); default: only at the end."""
    validation_fps: int = Field(default=24, gt=0)
    """Frame rate of validation mp4 files."""
    validation_height: int = Field(default=512, gt=0)
    """Default height of validation videos."""
    validation_width: int = Field(default=768, gt=0)
    """Default width of validation videos."""
    validation_num_frames: int = Field(default=49, gt=0)
    """Default frame count of validation videos."""
    validation_images: list[str] = Field(default_factory=list)
    """Image-to-video validation: one first-frame image per validation prompt (paths), in prompt order."""
    validation_inference_steps: int | None = Field(default=None, gt=0)
    """Denoising steps per validation video; default: the checkpoint's (30, a distilled one 8)."""
    validation_guidance_scale: float | None = Field(default=None, ge=0)
    """Classifier-free guidance scale of validation videos; default: the checkpoint's (3.0, a distilled one 1.0)."""
    decode_timestep: float | None = Field(default=None, ge=0, le=1)
    """Timestep the VAE decodes at (0.9.1 and later); default 0.05, as Lightricks recommends."""
    decode_noise_scale: float | None = Field(default=None, ge=0, le=1)
    """Noise mixed into the latents before decoding (0.9.1 and later); default 0.025."""
    validation_seed: int = 0
    """Seed of validation noise, fixed so successive validations are comparable."""
    validation_loss_steps: int | None = Field(default=None, gt=0)
    """Compute the held-out loss every N steps (needs holdout_samples > 0); default: with checkpoints."""


def _parse_num_workers(value: Any) -> int | tuple[int, int]:
    """``4`` (a fixed size), ``"1:4"`` or ``[1, 4]`` (elastic: any size from 1 to 4); ``"4:4"`` is ``4``."""
    form = "a whole number of workers (e.g. 4) or MIN:MAX for an elastic run (e.g. 2:4, or [2, 4] in YAML)"
    if isinstance(value, str):
        parts = value.split(":")
        if len(parts) > 2 or not all(part.strip().lstrip("-").isdigit() for part in parts):
            raise ValueError(f"expected {form}")
        value = [int(part) for part in parts]
    if isinstance(value, list | tuple):
        if len(value) == 1:
            value = value[0]
        elif len(value) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise ValueError(f"expected {form}")
    if isinstance(value, bool) or not isinstance(value, int | list | tuple):
        raise ValueError(f"expected {form}")
    low, high = (value, value) if isinstance(value, int) else value
    if low < 1:
        raise ValueError("a run needs at least 1 worker: MIN must be 1 or more (e.g. 1:4)")
    if low > high:
        raise ValueError(f"MIN {low} is above MAX {high}: write MIN:MAX with MIN <= MAX, e.g. {high}:{low}")
    return low if low == high else (low, high)


def _show_num_workers(value: int | tuple[int, int]) -> int | str:
    return value if isinstance(value, int) else f"{value[0]}:{value[1]}"


#: Backends whose checkpoints load at another number of workers, which an elastic run needs (a lost or an added
#: worker restarts the group at its new size from the latest checkpoint): DDP's rank 0 holds the whole state, FSDP's
#: DCP checkpoints re-shard on load. DeepSpeed ZeRO partitions optimizer state by rank and loads it only at the size
#: that wrote it (ray-ltx writes no universal checkpoints).
RESIZABLE_BACKENDS = ("ddp", "fsdp")

#: Worker-group restarts an elastic run allows by default: each lost worker or node uses one.
ELASTIC_MAX_FAILURES = 10


class DistributedConfig(_Section):
    num_workers: Annotated[int | tuple[int, int], BeforeValidator(_parse_num_workers),
                           PlainSerializer(_show_num_workers)] = 1
    """Ray Train workers (one per GPU on GPU clusters): N, or MIN:MAX for an elastic run that starts with what fits
    (at least MIN), shrinks when a worker or node is lost and grows back up to MAX, each time restarting the workers
    from the latest checkpoint. The global batch stays batch_size x gradient_accumulation_steps x MAX whatever the
    size (at a size that does not divide gradient_accumulation_steps x MAX, some workers make a padding pass that
    trains nothing); --backend ddp (or fsdp) only: a DeepSpeed checkpoint loads only at the size that wrote it."""
    use_gpu: bool | None = None
    """Train on GPUs; default: when the cluster has GPUs."""
    gpus_per_worker: float = Field(default=1.0, gt=0)
    """GPUs each worker reserves when use_gpu is on."""
    cpus_per_worker: float = Field(default=1.0, gt=0)
    """CPUs each worker reserves."""
    resources_per_worker: dict[str, float] = Field(default_factory=dict)
    """Extra Ray resources each worker reserves (e.g. {"node_type_a100": 1})."""
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    """How Ray places workers on nodes."""
    backend: Literal["ddp", "deepspeed", "fsdp"] = "ddp"
    """How workers share the model: 'ddp' keeps a whole copy per worker (LoRA, and full finetunes that fit
    one GPU: the fastest where the model fits, e.g. the 2B full finetune on one H200 at 13.7 samples/s, FSDP
    0.77x of it at batch 1; docs/performance.md); 'deepspeed' shards optimizer state (ZeRO-2) or also parameters (ZeRO-3), with optional CPU
    offload (a fixed num_workers only: its checkpoints load only at the size that wrote them); 'fsdp' (torch
    FSDP2) shards parameters, gradients and optimizer state per transformer block (full finetunes larger than
    one GPU), and its checkpoints resume on another number of workers."""
    deepspeed_stage: Literal[2, 3] = 2
    """ZeRO stage when backend is deepspeed."""
    offload_optimizer: bool = False
    """DeepSpeed: keep optimizer state on the CPU. FSDP offloads it only together with the parameters:
    give --offload_params."""
    offload_params: bool = False
    """DeepSpeed ZeRO-3: keep parameters on the CPU. FSDP: keep parameters, gradients and optimizer state
    on the CPU (the optimizer step runs there)."""
    nccl_timeout: int = Field(default=1800, gt=0)
    """Seconds a collective may wait before the process group times out."""
    max_failures: int | None = Field(default=None, ge=-1)
    """Worker-group restarts from the latest checkpoint before the run fails (-1: unlimited); default 0, or 10 with
    an elastic num_workers MIN:MAX (each lost worker or node uses one; a grow uses none)."""
    elastic_resize_interval_s: float = Field(default=60.0, gt=0)
    """Elastic runs (num_workers MIN:MAX): how often a running worker group checks whether more workers fit (a grow
    restarts the workers from the latest checkpoint, replaying the steps since)."""
    ray_address: str | None = None
    """Ray cluster to connect to ('auto', 'HOST:PORT', 'ray://...', or 'local' for a private local cluster);
    default: RAY_ADDRESS, else a cluster started with `ray start` on this machine, else a private local one."""
    storage_path: str | None = None
    """Where Ray Train keeps checkpoints (a path or URI all nodes reach); default: <output_dir>/ray."""
    run_name: str = "train"
    """Name of the Ray Train run under storage_path; resuming needs the same name."""

    @field_validator("run_name")
    @classmethod
    def _run_name_is_one_path_component(cls, value: str) -> str:
        # It names <storage_path>/<run_name>, which --overwrite_output_dir deletes: '..' or 'a/b' would point elsewhere.
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", value):
            raise ValueError("must be one directory name: letters, digits, '.', '_' and '-', starting with a letter "
                             "or digit (no '/', no '..'), e.g. --run_name train")
        return value

    @property
    def min_workers(self) -> int:
        return self.num_workers if isinstance(self.num_workers, int) else self.num_workers[0]

    @property
    def max_workers(self) -> int:
        return self.num_workers if isinstance(self.num_workers, int) else self.num_workers[1]

    @property
    def elastic(self) -> bool:
        return self.min_workers != self.max_workers

    @property
    def failures_allowed(self) -> int:
        """max_failures, or its default for this num_workers."""
        if self.max_failures is not None:
            return self.max_failures
        return ELASTIC_MAX_FAILURES if self.elastic else 0


class TrackingConfig(_Section):
    report_to: Literal["mlflow", "none", "wandb"] = "mlflow"
    """Where runs are recorded: 'mlflow' (default), 'wandb' (Weights & Biases: log in with `wandb login` or
    WANDB_API_KEY, or set WANDB_MODE=offline and `wandb sync` later), or 'none'."""
    tracker_name: str = "ray-ltx"
    """The MLflow experiment, or the W&B project, that holds the runs."""
    mlflow_tracking_uri: str | None = None
    """MLflow tracking URI; default: MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlruns/mlflow.db."""
    mlflow_run_name: str | None = None
    """The run's name in MLflow or W&B; default: derived from the output directory."""
    log_system_metrics: bool = True
    """Record CPU/GPU/memory system metrics in the run while training."""
    register_model: str | None = None
    """Register the final weights (the LoRA file, or transformer/) as a new version of this model in MLflow's
    model registry (load it with `ray-ltx generate --lora models:/NAME/latest`); with W&B, the name of the model
    artifact the weights are logged as."""

    @field_validator("register_model")
    @classmethod
    def _model_name(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", value):
            raise ValueError("must be letters, digits, '.', '_' and '-', starting with a letter or digit (it is "
                             "read back as models:/NAME/latest), e.g. --register_model bw-style-lora")
        return value


class Config(BaseModel):
    """The whole resolved configuration of one ray-ltx run."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=True)

    output_dir: str = "ray-ltx-output"
    """Where the run writes everything: the weights (LoRA or transformer/), training_config.json, the resolved
    config.yaml, the memory report, validation videos, the latent cache (unless cache_dir) and the Ray Train
    checkpoints (unless storage_path)."""
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    diffusion: DiffusionConfig = Field(default_factory=DiffusionConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @field_validator("output_dir")
    @classmethod
    def _output_dir_not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value

    @model_validator(mode="after")
    def _check_combinations(self) -> Config:
        training = self.training
        v = self.validation
        for name, value, multiple, offset in (("validation_height", v.validation_height, SIDE_MULTIPLE, 0),
                                              ("validation_width", v.validation_width, SIDE_MULTIPLE, 0),
                                              ("validation_num_frames", v.validation_num_frames, FRAME_MULTIPLE, 1)):
            if (value - offset) % multiple:
                form = f"{multiple}k+1 (9, 17, ..., 49, ...)" if offset else f"a multiple of {multiple}"
                raise ValueError(f"--{name} {value}: the pipeline needs {form}")
        if training.training_type == "full-finetune":
            # Compared with the defaults (not "was it given"), so a saved full-finetune config reloads.
            defaults = TrainingConfig()
            lora_flags = sorted(name for name in ("rank", "lora_alpha", "target_modules")
                                if getattr(training, name) != getattr(defaults, name))
            if lora_flags:
                raise ValueError(
                    f"{', '.join('--' + f for f in lora_flags)}: LoRA settings, but --training_type is "
                    "full-finetune; remove them or set --training_type lora"
                )
        if self.data.dataset_config and (self.data.data_root or self.data.dataset_file):
            raise ValueError("--dataset_config lists the datasets itself: drop --data_root and --dataset_file, or "
                             "drop --dataset_config")
        if self.data.frame_sampling == "fps" and not self.data.sample_fps:
            raise ValueError("--frame_sampling fps needs --sample_fps (e.g. --sample_fps 24)")
        if self.data.frame_sampling == "stride" and not self.data.frame_stride:
            raise ValueError("--frame_sampling stride needs --frame_stride (e.g. --frame_stride 2)")
        dist = self.distributed
        if dist.backend == "fsdp":
            self._check_fsdp()
        elif dist.offload_params and not (dist.backend == "deepspeed" and dist.deepspeed_stage == 3):
            raise ValueError("--offload_params needs --backend deepspeed --deepspeed_stage 3 (or --backend fsdp)")
        elif dist.offload_optimizer and dist.backend != "deepspeed":
            raise ValueError("--offload_optimizer needs --backend deepspeed")
        if dist.elastic and dist.backend not in RESIZABLE_BACKENDS:
            raise ValueError(
                f"--num_workers {dist.min_workers}:{dist.max_workers} with --backend {dist.backend}: an elastic run "
                "restarts its workers at a new size from the latest checkpoint, and a DeepSpeed ZeRO checkpoint "
                "loads only at the size that wrote it. Use --backend ddp (or fsdp) for an elastic run, or a fixed "
                f"--num_workers (e.g. {dist.max_workers}) with DeepSpeed")
        return self

    def _check_fsdp(self) -> None:
        """Settings --backend fsdp cannot honour, refused before any work."""
        dist, training = self.distributed, self.training
        if dist.deepspeed_stage != DistributedConfig().deepspeed_stage:
            raise ValueError(f"--deepspeed_stage {dist.deepspeed_stage} is a DeepSpeed setting; --backend fsdp always "
                             "shards parameters, gradients and optimizer state: remove --deepspeed_stage")
        if dist.offload_optimizer and not dist.offload_params:
            raise ValueError("--offload_optimizer: FSDP cannot offload the optimizer state alone; --offload_params "
                             "keeps parameters, gradients and optimizer state on the CPU")
        if training.compile and training.compile_mode in ("reduce-overhead", "max-autotune"):
            # CUDA graphs replay fixed addresses; FSDP frees and re-gathers every block's parameters each step.
            raise ValueError(f"--compile_mode {training.compile_mode} (CUDA graphs) does not work with --backend fsdp; use "
                             "--compile_mode default or max-autotune-no-cudagraphs")
        if self.optimizer.optimizer == "adamw8bit":
            raise ValueError("--optimizer adamw8bit: bitsandbytes' kernels cannot update FSDP's sharded parameters; "
                             "use --optimizer adamw or adamw_fused with --backend fsdp")

    # -- resolved locations -------------------------------------------------------------------

    @property
    def cache_dir(self) -> str:
        return self.data.cache_dir or join(self.output_dir, "cache")

    @property
    def storage_path(self) -> str:
        return self.distributed.storage_path or join(self.output_dir, "ray")

    @property
    def tracking_uri(self) -> str:
        return self.tracking.mlflow_tracking_uri or default_tracking_uri()

    def resolved(self) -> Config:
        """A copy with every local path absolute and the tracking URI fixed, as the driver sees them.

        Workers run in other directories (and on other nodes), so relative paths and the
        cwd-based default tracking store are resolved once, on the driver, before anything ships.
        The model paths stay Hub ids unless they name an existing local folder or file.
        """
        from ray_ltx.storage import absolute, is_uri

        data = self.to_dict()
        for key in ("pretrained_model_name_or_path", "base_model_name_or_path"):
            model = data["model"][key]
            if model and not is_uri(model) and Path(model).expanduser().exists():
                data["model"][key] = str(Path(model).expanduser().resolve())
        data["validation"]["validation_images"] = [absolute(p) for p in data["validation"]["validation_images"]]
        data["output_dir"] = absolute(self.output_dir)
        for section, key in (("data", "data_root"), ("data", "dataset_file"), ("data", "dataset_config"),
                             ("data", "cache_dir"), ("distributed", "storage_path"),
                             ("validation", "validation_prompts_file"), ("validation", "validation_dataset_file")):
            if data[section].get(key):
                data[section][key] = absolute(data[section][key])
        if data["data"]["dataset_config"]:  # the run trains on every dataset's own buckets
            from ray_ltx.data.sources import run_buckets

            buckets = run_buckets(data["data"]["dataset_config"], self.data.video_resolution_buckets)
            data["data"]["video_resolution_buckets"] = [str(b) for b in buckets]
        resume = data["training"].get("resume_from_checkpoint")
        if resume and resume != "latest":
            data["training"]["resume_from_checkpoint"] = absolute(resume)
        if not data["tracking"]["mlflow_tracking_uri"] and not os.environ.get("MLFLOW_TRACKING_URI"):
            data["tracking"]["mlflow_tracking_uri"] = default_tracking_uri()  # a cwd-based default, pinned here
        return Config.from_dict(data)

    # -- serialisation ------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return json.loads(self.model_dump_json())

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def flatten(self) -> dict[str, str]:
        """Leaf values keyed ``section.field``: the MLflow params of a run."""
        flat: dict[str, str] = {}
        for key, value in self.to_dict().items():
            if isinstance(value, dict):
                for leaf, leaf_value in value.items():
                    flat[f"{key}.{leaf}"] = _param_text(leaf_value)
            else:
                flat[key] = _param_text(value)
        return flat

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> Config:
        return build_config(data, source=source)


def _param_text(value: Any) -> str:
    if isinstance(value, list):
        return " ".join(str(v) for v in value)
    return "" if value is None else str(value)


def default_tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else a SQLite store in ./mlruns (MLflow's own convention)."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{Path('mlruns').resolve() / 'mlflow.db'}"


# -- the flat-name index: finetrainers flags and flat YAML keys ---------------------------------

SECTIONS: dict[str, type[_Section]] = {
    "model": ModelConfig,
    "data": DataConfig,
    "diffusion": DiffusionConfig,
    "training": TrainingConfig,
    "optimizer": OptimizerConfig,
    "validation": ValidationConfig,
    "distributed": DistributedConfig,
    "tracking": TrackingConfig,
}
TOP_LEVEL_FIELDS = ("output_dir",)

#: leaf name -> section name (None for top-level fields)
FIELD_SECTION: dict[str, str | None] = {name: None for name in TOP_LEVEL_FIELDS}
for _section, _cls in SECTIONS.items():
    for _name in _cls.model_fields:
        assert _name not in FIELD_SECTION, f"config field {_name} is defined twice"
        FIELD_SECTION[_name] = _section


def field_help(name: str) -> str:
    section = FIELD_SECTION[name]
    cls = Config if section is None else SECTIONS[section]
    return cls.model_fields[name].description or ""


def suggest(name: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _nest(data: dict[str, Any], source: str) -> dict[str, Any]:
    """Turn a mix of sectioned and flat keys into the sectioned tree, rejecting unknown keys."""
    nested: dict[str, Any] = {}
    for key, value in data.items():
        # "optimizer" names both a section and a setting (finetrainers' --optimizer): a mapping is the section.
        if key in SECTIONS and not (key in FIELD_SECTION and not isinstance(value, dict)):
            if value is None:
                continue
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: section '{key}' must be a mapping of settings, got {value!r}")
            for leaf, leaf_value in value.items():
                if leaf not in SECTIONS[key].model_fields:
                    raise ConfigError(
                        f"{source}: unknown setting '{key}.{leaf}'"
                        f"{suggest(leaf, list(SECTIONS[key].model_fields))}; "
                        f"run `ray-ltx train --help` for the valid names"
                    )
                nested.setdefault(key, {})[leaf] = leaf_value
        elif key in FIELD_SECTION:
            section = FIELD_SECTION[key]
            if section is None:
                nested[key] = value
            else:
                nested.setdefault(section, {})[key] = value
        else:
            raise ConfigError(
                f"{source}: unknown setting '{key}'{suggest(key, [*FIELD_SECTION, *SECTIONS])}; "
                "run `ray-ltx train --help` for the valid names"
            )
    return nested


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def _format_validation_error(error: ValidationError, source: str) -> str:
    lines = []
    for item in error.errors():
        loc = [str(p) for p in item["loc"]]
        leaf = next((p for p in reversed(loc) if p in FIELD_SECTION), None)
        where = ".".join(p for p in loc if not p.isdigit()) or "config"
        flag = f" (--{leaf})" if leaf else ""
        message = item["msg"].removeprefix("Value error, ")
        if "input" in item and leaf:
            lines.append(f"  {where}{flag}: got {item['input']!r}: {message}")
        else:
            lines.append(f"  {where}{flag}: {message}")
    return f"invalid configuration in {source}:\n" + "\n".join(lines)


def build_config(*layers: dict[str, Any], source: str = "config") -> Config:
    """Validate layered settings (later layers win) into a :class:`Config`, or raise ConfigError."""
    merged: dict[str, Any] = {}
    for layer in layers:
        merged = _merge(merged, _nest(layer, source))
    try:
        return Config.model_validate(merged)
    except ValidationError as error:
        raise ConfigError(_format_validation_error(error, source)) from None


class _ConfigLoader(yaml.SafeLoader):
    """YAML 1.1 reads ``1:4`` as the base-60 number 64; in a config it is text (``num_workers: 1:4``)."""


def _sexagesimal_as_text(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int | str:
    value = loader.construct_scalar(node)
    return value if ":" in value else loader.construct_yaml_int(node)


_ConfigLoader.add_constructor("tag:yaml.org,2002:int", _sexagesimal_as_text)


def load_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML config file into a dict, with errors that name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; pass an existing YAML file to --config")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_ConfigLoader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: not valid YAML ({getattr(error, 'problem', error)})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text; save the config as UTF-8") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must be a mapping of settings, got {type(data).__name__}")
    return data


def load_config(path: str | os.PathLike[str] | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Defaults < YAML file < overrides (flat or sectioned names)."""
    layers = []
    source = "command line"
    if path is not None:
        layers.append(load_yaml(path))
        source = f"{path} and the command line" if overrides else str(path)
    layers.append(overrides or {})
    return build_config(*layers, source=source)
