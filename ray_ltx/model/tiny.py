"""Randomly initialised LTX-Video pipelines built from configs, for machines that cannot reach a model hub.

"tiny" is small enough for CPU tests and demos yet keeps the real VAE compression (32x spatial, 8x temporal),
so every bucket valid for it is valid for Lightricks/LTX-Video too. "full" has the real shapes (diffusers'
default LTX-Video transformer and VAE, a T5-XXL-shaped text encoder) for GPU benchmarks. Either is written as a
diffusers pipeline directory that loads exactly like a local copy of Lightricks/LTX-Video.
"""

import contextlib
import itertools
import math
import re
import shutil
import string
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import torch
from diffusers import (
    AutoencoderKLLTXVideo,
    FlowMatchEulerDiscreteScheduler,
    LTXPipeline,
    LTXVideoTransformer3DModel,
)
from tokenizers import Tokenizer, decoders, pre_tokenizers, processors
from tokenizers.models import Unigram
from transformers import T5Config, T5EncoderModel, T5TokenizerFast

Size = Literal["tiny", "full"]
WRITTEN_MARKER = ".ray-ltx-tiny-model"  # tells a directory written here (and replaceable) from anything else

# Rows of the tiny text encoder's embedding: room for every piece of `build_tokenizer`, as T5-XXL has 32128
# rows for its 32100 pieces.
TINY_VOCAB_SIZE = 1024
TINY_TEXT_DIM = 32
TINY_LATENT_CHANNELS = 8

_TINY_TRANSFORMER = {
    "in_channels": TINY_LATENT_CHANNELS,
    "out_channels": TINY_LATENT_CHANNELS,
    "num_attention_heads": 2,
    "attention_head_dim": 32,
    # The caption projection maps text features to the inner dim, so cross-attention must read that width.
    "cross_attention_dim": 64,
    "num_layers": 2,
    "caption_channels": TINY_TEXT_DIM,
}
# Three spatio-temporal downsamplings after a 4x4 patchify give the real 32x spatial, 8x temporal ratios.
_TINY_VAE = {
    "latent_channels": TINY_LATENT_CHANNELS,
    "block_out_channels": (8, 16, 32, 32),
    "decoder_block_out_channels": (8, 16, 32, 32),
    "layers_per_block": (1, 1, 1, 1, 1),
    "decoder_layers_per_block": (1, 1, 1, 1, 1),
    "spatio_temporal_scaling": (True, True, True, False),
    "decoder_spatio_temporal_scaling": (True, True, True, False),
    "patch_size": 4,
    "patch_size_t": 1,
}
_T5_V1_1 = {
    "feed_forward_proj": "gated-gelu",
    "tie_word_embeddings": False,
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "layer_norm_epsilon": 1e-6,
    "is_encoder_decoder": False,
    "use_cache": False,
}
_TINY_TEXT_ENCODER = {"d_model": TINY_TEXT_DIM, "d_ff": 64, "num_layers": 2, "num_heads": 4, "d_kv": 8}
# google/t5-v1_1-xxl, the encoder Lightricks/LTX-Video ships with.
_T5_XXL = {"d_model": 4096, "d_ff": 10240, "num_layers": 24, "num_heads": 64, "d_kv": 64}

# Word lists for the tokenizer corpus: space-separated words, "|"-separated phrases.
_COLOURS = (
    "red orange yellow green blue purple violet pink brown black white grey gray cyan magenta gold silver "
    "dark light bright pale"
)
_SHAPES = "circle square triangle rectangle star hexagon ball cube dot line ring diamond disc blob"
_MOTIONS = (
    "moving left|moving right|moving up|moving down|rotating clockwise|spinning|bouncing|falling|rising|"
    "growing|shrinking|sliding across the frame|drifting slowly|pulsing|zooming in|zooming out|standing still"
)
_BACKGROUNDS = "background|sky|field|wall|floor|water|grass|sand|snow|checkerboard|gradient|plain backdrop|night sky"
_CAMERA = (
    "The camera pans left.|The camera pans right.|The camera tilts up.|The camera tilts down.|"
    "The camera zooms in slowly.|The camera zooms out.|A static camera holds a wide shot.|"
    "A handheld tracking shot follows the subject.|A close-up view in slow motion.|"
    "The dolly shot moves forward at a low angle.|An aerial view from high above.|The scene is in focus."
)
_COMMON = (
    "the a an and or but of on in at to from with without over under above below between into onto out "
    "is are was were be been being has have had do does did will would can could should may might must "
    "it its this that these those there here he she they we you i his her their our your my "
    "one two three four five many few some all each every more most less other another same different "
    "small large big little tiny huge tall short long wide narrow thick thin round flat smooth rough soft hard "
    "fast slow quick quickly slowly gently suddenly softly smoothly steadily again still very too almost "
    "man woman person people child dog cat bird car tree house road city street river ocean mountain forest "
    "sun moon light shadow cloud rain fire smoke glass metal wood stone paper cloth "
    "walks runs jumps flies swims turns looks holds opens closes moves shows appears fades "
    "video clip image picture frame scene shot style color colour texture pattern edge center corner "
    "left right top bottom middle side front back near far inside outside around through across along "
    "day night morning evening time first last next then while after before during"
)
_CORPUS_WORD = re.compile(r"[A-Za-z]+")


def build_tokenizer(max_length: int = 128) -> T5TokenizerFast:
    """A T5-style Unigram tokenizer made here, so captions split into real word pieces without a model hub.

    Pieces are the corpus words (scored by log frequency, the unigram maximum-likelihood estimate) plus every
    printable ASCII character as a fallback, so trigger words like BW_STYLE spell out instead of becoming
    <unk>. `tokenizers`' UnigramTrainer is not used: its result changes from process to process (hash-map
    order feeds its float sums), and on a small corpus it keeps few whole words. The pre-tokenizer and decoder
    are the ones `T5TokenizerFast` rebuilds on load, so the tokenizer behaves the same after a save/load.
    """
    counts = Counter(_CORPUS_WORD.findall(" ".join(_corpus())))
    total = sum(counts.values())
    words = sorted(counts, key=lambda word: (-counts[word], word))
    fallback_score = math.log(1 / total) - 5.0
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", fallback_score)]
    vocab += [(f"▁{word}", math.log(counts[word] / total)) for word in words]
    vocab += [(char, fallback_score) for char in string.ascii_letters + string.digits + string.punctuation]
    backend = Tokenizer(Unigram(vocab, unk_id=2))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True),
        ]
    )
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    backend.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    return T5TokenizerFast(tokenizer_object=backend, model_max_length=max_length, extra_ids=0)


def _corpus() -> Iterator[str]:
    """Caption-like sentences; how often a word occurs sets its piece's score."""
    colours, motions, backgrounds, cameras = (
        _COLOURS.split(),
        _MOTIONS.split("|"),
        _BACKGROUNDS.split("|"),
        _CAMERA.split("|"),
    )
    for i, (colour, shape) in enumerate(itertools.product(colours, _SHAPES.split())):
        backdrop = f"{colours[(i * 7) % len(colours)]} {backgrounds[i % len(backgrounds)]}"
        yield f"a {colour} {shape} {motions[i % len(motions)]} on a {backdrop}. {cameras[i % len(cameras)]}"
    yield _COMMON
    yield _COMMON.title()


@contextlib.contextmanager
def _seeded_construction(seed: int, dtype: torch.dtype, device: str | torch.device | None) -> Iterator[None]:
    """Build parameters directly on `device` in `dtype` from a private RNG stream.

    Constructing in place (rather than in fp32 on CPU, then casting and moving) keeps a 4.7B-parameter
    encoder from taking minutes and twice its memory; forking the RNG leaves the caller's random state alone.
    The same seed gives the same weights on the same kind of device.
    """
    device = torch.device(device or "cpu")
    previous_dtype = torch.get_default_dtype()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), device:
        torch.manual_seed(seed)
        torch.set_default_dtype(dtype)
        try:
            yield
        finally:
            torch.set_default_dtype(previous_dtype)


def build_transformer(
    size: Size = "tiny",
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
    seed: int = 0,
) -> LTXVideoTransformer3DModel:
    """LTX-Video denoiser; "full" is diffusers' default config (1,923,385,472 parameters)."""
    config = _TINY_TRANSFORMER if _is_tiny(size) else {}
    with _seeded_construction(seed, dtype, device):
        return LTXVideoTransformer3DModel(**config)


def build_vae(
    size: Size = "tiny",
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
    seed: int = 0,
) -> AutoencoderKLLTXVideo:
    """LTX-Video VAE; "tiny" keeps the real 32x spatial and 8x temporal compression with few channels."""
    config = _TINY_VAE if _is_tiny(size) else {}
    with _seeded_construction(seed, dtype, device):
        return AutoencoderKLLTXVideo(**config)


def build_text_encoder(
    size: Size = "tiny",
    vocab_size: int | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
    seed: int = 0,
) -> T5EncoderModel:
    """T5 v1.1 encoder; "full" is shaped as google/t5-v1_1-xxl, "tiny" fits `build_tokenizer`'s vocabulary."""
    tiny = _is_tiny(size)
    if vocab_size is None:
        vocab_size = TINY_VOCAB_SIZE if tiny else 32128
    config = T5Config(vocab_size=vocab_size, **(_TINY_TEXT_ENCODER if tiny else _T5_XXL), **_T5_V1_1)
    with _seeded_construction(seed, dtype, device):
        return T5EncoderModel(config)


def _build_scheduler() -> FlowMatchEulerDiscreteScheduler:
    """The scheduler config Lightricks/LTX-Video ships (diffusers' scripts/convert_ltx_to_diffusers.py)."""
    return FlowMatchEulerDiscreteScheduler(
        use_dynamic_shifting=True,
        base_shift=0.95,
        max_shift=2.05,
        base_image_seq_len=1024,
        max_image_seq_len=4096,
        shift_terminal=0.1,
    )


def write_pipeline(
    out_dir: str | Path, size: Size = "tiny", seed: int = 0, dtype: torch.dtype = torch.float32,
    overwrite: bool = False,
) -> Path:
    """Write a diffusers LTX-Video pipeline directory that `LTXPipeline.from_pretrained` loads like the real one.

    The directory is built beside `out_dir` and renamed into place, so a crash never leaves a half-written
    model. An existing `out_dir` is replaced only if it is empty or a model written here before, or with
    `overwrite`.
    """
    out_dir = Path(out_dir).absolute()
    _check_replaceable(out_dir, overwrite)
    pipeline = LTXPipeline(
        scheduler=_build_scheduler(),
        vae=build_vae(size, dtype, seed=seed),
        text_encoder=build_text_encoder(size, dtype=dtype, seed=seed),
        tokenizer=build_tokenizer(),
        transformer=build_transformer(size, dtype, seed=seed),
    )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = out_dir.with_name(f".{out_dir.name}.partial-{uuid.uuid4().hex}")
    try:
        pipeline.save_pretrained(staging)
        (staging / WRITTEN_MARKER).write_text("a random-weight LTX-Video pipeline written by ray-ltx make-tiny-model\n")
        if out_dir.exists():
            retired = out_dir.with_name(f".{out_dir.name}.old-{uuid.uuid4().hex}")
            out_dir.rename(retired)
            staging.rename(out_dir)
            shutil.rmtree(retired)
        else:
            staging.rename(out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def _check_replaceable(out_dir: Path, overwrite: bool) -> None:
    """Refuse to replace a directory holding anything else than a model written here (a real model, data)."""
    from ray_ltx import storage
    from ray_ltx.errors import OutputDirError

    if not out_dir.exists():
        return
    storage.check_deletable(str(out_dir))
    if overwrite or (out_dir / WRITTEN_MARKER).is_file() or (out_dir.is_dir() and not any(out_dir.iterdir())):
        return
    raise OutputDirError(f"--out {out_dir} already holds files that make-tiny-model did not write; pass --overwrite "
                         "to replace it (everything in it is deleted), or choose another --out")


def _is_tiny(size: str) -> bool:
    if size not in ("tiny", "full"):
        raise ValueError(f"size must be 'tiny' or 'full', got {size!r}")
    return size == "tiny"
