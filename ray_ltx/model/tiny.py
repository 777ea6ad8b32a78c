"""Randomly initialised LTX-Video pipelines built from configs, for machines that cannot reach a model hub.

"tiny" is small enough for CPU tests and demos yet keeps the real VAE compression (32x spatial, 8x temporal),
so every bucket valid for it is valid for Lightricks/LTX-Video too. "full" has the real shapes (diffusers'
LTX-Video transformer and VAE configs, a T5-XXL-shaped text encoder) for GPU benchmarks. Each LTX-Video version
has its own configuration (:data:`VERSIONS`): 0.9.0 (no VAE timestep conditioning), 0.9.1 (a timestep-conditioned
decoder), 0.9.5 (the new encoder as well, the 2B transformer) and 0.9.7-13b (that VAE and the 13B transformer
shape: 48 layers, 32 heads of 128, cross-attention 4096). Either size is written as a diffusers pipeline directory
that loads exactly like a local copy of the Lightricks repo of that version, or as a Lightricks single file.
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
Version = Literal["0.9.0", "0.9.1", "0.9.5", "0.9.7-13b"]
VERSIONS: tuple[str, ...] = ("0.9.0", "0.9.1", "0.9.5", "0.9.7-13b")
Family = Literal["ltx_video", "ltx2"]
LTX2_VERSIONS: tuple[str, ...] = ("2.0",)
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
# The 13B transformer's proportions (wider heads, cross-attention as wide as the model) at tiny size.
_TINY_TRANSFORMER_13B = {**_TINY_TRANSFORMER, "attention_head_dim": 64, "cross_attention_dim": 128, "num_layers": 3}
# 0.9.1: the decoder upsamples with residuals and is conditioned on the timestep (decode_timestep).
_TINY_VAE_091 = {
    **_TINY_VAE,
    "decoder_block_out_channels": (16, 32, 64),
    "decoder_layers_per_block": (1, 1, 1, 1),
    "decoder_spatio_temporal_scaling": (True, True, True),
    "decoder_inject_noise": (True, True, True, False),
    "upsample_residual": (True, True, True),
    "upsample_factor": (2, 2, 2),
    "timestep_conditioning": True,
}
# 0.9.5 and later: the new encoder (spatial, temporal and spatio-temporal downsamplings) on the 0.9.1-style decoder.
_TINY_VAE_095 = {
    **_TINY_VAE_091,
    "block_out_channels": (8, 16, 32, 64, 64),
    "down_block_types": ("LTXVideo095DownBlock3D",) * 4,
    "layers_per_block": (1, 1, 1, 1, 1),
    "spatio_temporal_scaling": (True, True, True, True),
    "downsample_type": ("spatial", "temporal", "spatiotemporal", "spatiotemporal"),
    "decoder_inject_noise": (False, False, False, False),
    "spatial_compression_ratio": 32,
    "temporal_compression_ratio": 8,
}
# The full-size configurations of diffusers' conversion of each release (scripts/convert_ltx_to_diffusers.py).
_FULL_VAE_091 = {
    "block_out_channels": (128, 256, 512, 512), "decoder_block_out_channels": (256, 512, 1024),
    "layers_per_block": (4, 3, 3, 3, 4), "decoder_layers_per_block": (5, 6, 7, 8),
    "spatio_temporal_scaling": (True, True, True, False), "decoder_spatio_temporal_scaling": (True, True, True),
    "decoder_inject_noise": (True, True, True, False), "upsample_residual": (True, True, True),
    "upsample_factor": (2, 2, 2), "timestep_conditioning": True,
}
_FULL_VAE_095 = {
    "block_out_channels": (128, 256, 512, 1024, 2048), "down_block_types": ("LTXVideo095DownBlock3D",) * 4,
    "decoder_block_out_channels": (256, 512, 1024), "layers_per_block": (4, 6, 6, 2, 2),
    "decoder_layers_per_block": (5, 5, 5, 5), "spatio_temporal_scaling": (True, True, True, True),
    "decoder_spatio_temporal_scaling": (True, True, True), "decoder_inject_noise": (False, False, False, False),
    "downsample_type": ("spatial", "temporal", "spatiotemporal", "spatiotemporal"),
    "upsample_residual": (True, True, True), "upsample_factor": (2, 2, 2), "timestep_conditioning": True,
    "spatial_compression_ratio": 32, "temporal_compression_ratio": 8,
}
_FULL_TRANSFORMER_13B = {"num_attention_heads": 32, "attention_head_dim": 128, "cross_attention_dim": 4096,
                         "num_layers": 48}
_VAE_CONFIGS = {
    ("tiny", "0.9.0"): _TINY_VAE, ("tiny", "0.9.1"): _TINY_VAE_091, ("tiny", "0.9.5"): _TINY_VAE_095,
    ("tiny", "0.9.7-13b"): _TINY_VAE_095,
    ("full", "0.9.0"): {}, ("full", "0.9.1"): _FULL_VAE_091, ("full", "0.9.5"): _FULL_VAE_095,
    ("full", "0.9.7-13b"): _FULL_VAE_095,
}
_TRANSFORMER_CONFIGS = {
    ("tiny", "0.9.7-13b"): _TINY_TRANSFORMER_13B, ("full", "0.9.7-13b"): _FULL_TRANSFORMER_13B,
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
    version: Version = "0.9.0",
) -> LTXVideoTransformer3DModel:
    """LTX-Video denoiser; "full" 2B is diffusers' default config (1,923,385,472 parameters), 0.9.7-13b the 13B."""
    _check(size, version)
    config = _TRANSFORMER_CONFIGS.get((size, version), _TINY_TRANSFORMER if size == "tiny" else {})
    if size == "tiny" and version == "0.9.7-13b":
        config = _TINY_TRANSFORMER_13B
    with _seeded_construction(seed, dtype, device):
        return LTXVideoTransformer3DModel(**config)


def build_vae(
    size: Size = "tiny",
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
    seed: int = 0,
    version: Version = "0.9.0",
) -> AutoencoderKLLTXVideo:
    """LTX-Video VAE of a release; "tiny" keeps the real 32x spatial and 8x temporal compression with few channels."""
    _check(size, version)
    with _seeded_construction(seed, dtype, device):
        return AutoencoderKLLTXVideo(**_VAE_CONFIGS[(size, version)])


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


def _build_scheduler(version: str = "0.9.0") -> FlowMatchEulerDiscreteScheduler:
    """The scheduler config each release ships (diffusers' scripts/convert_ltx_to_diffusers.py)."""
    if version in ("0.9.5", "0.9.7-13b"):
        return FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=False)
    return FlowMatchEulerDiscreteScheduler(
        use_dynamic_shifting=True,
        base_shift=0.95,
        max_shift=2.05,
        base_image_seq_len=1024,
        max_image_seq_len=4096,
        shift_terminal=0.1,
    )


# -- LTX-2 ----------------------------------------------------------------------------------------------------------
# The tiny LTX-2 keeps the real compressions (video 32x/8x, audio 4x in time and mel bins) and the real 64 mel bins at
# 16 kHz with 160-sample hops, so audio preprocessing runs as for Lightricks/LTX-2; every width is small. Its video
# stream (2 heads of 16) is narrower than the tiny LTX-Video's (2 of 32), so a LoRA of one never fits the other.
TINY_GEMMA_DIM = 32
TINY_GEMMA_LAYERS = 2
TINY_GEMMA_VOCAB_SIZE = 2048  # room for every piece of `build_gemma_tokenizer`
_TINY_LTX2_TRANSFORMER = {
    "in_channels": TINY_LATENT_CHANNELS, "out_channels": TINY_LATENT_CHANNELS, "num_attention_heads": 2,
    "attention_head_dim": 16, "cross_attention_dim": 32, "audio_in_channels": 32, "audio_out_channels": 32,
    "audio_num_attention_heads": 2, "audio_attention_head_dim": 8, "audio_cross_attention_dim": 16, "num_layers": 2,
    "caption_channels": TINY_GEMMA_DIM,
}
_LTX2_VAE_COMPRESSION = {"spatial_compression_ratio": 32, "temporal_compression_ratio": 8}
_TINY_LTX2_VAE = {
    "latent_channels": TINY_LATENT_CHANNELS, "block_out_channels": (8, 16, 32, 64),
    "decoder_block_out_channels": (16, 32, 64), "layers_per_block": (1, 1, 1, 1, 1),
    "decoder_layers_per_block": (1, 1, 1, 1), **_LTX2_VAE_COMPRESSION,
}
# Packed audio tokens are latent channels x latent mel bins (2 x 64 / 4 = 32) wide, the width of the latent statistics
# (base_channels), as 8 x 16 = 128 in the real audio VAE.
_TINY_LTX2_AUDIO_VAE = {"base_channels": 32, "latent_channels": 2, "num_res_blocks": 1}
# The real upsampling (6 * 5 * 2 * 2 * 2 = 240: 100 mel frames/s to 24 kHz) over 2 x 64 mel bins, few channels.
_TINY_LTX2_VOCODER = {"in_channels": 128, "hidden_channels": 32, "upsample_kernel_sizes": [12, 10, 4, 4, 4],
                      "resnet_kernel_sizes": [3], "resnet_dilations": [[1]]}
_TINY_LTX2_CONNECTORS = {
    "caption_channels": TINY_GEMMA_DIM, "text_proj_in_factor": TINY_GEMMA_LAYERS + 1,
    "video_connector_num_attention_heads": 2, "video_connector_attention_head_dim": 16, "video_connector_num_layers": 1,
    "audio_connector_num_attention_heads": 2, "audio_connector_attention_head_dim": 16, "audio_connector_num_layers": 1,
}
_TINY_GEMMA = {
    "text_config": {"vocab_size": TINY_GEMMA_VOCAB_SIZE, "hidden_size": TINY_GEMMA_DIM, "intermediate_size": 64,
                    "num_hidden_layers": TINY_GEMMA_LAYERS, "num_attention_heads": 2, "num_key_value_heads": 1,
                    "head_dim": 16, "sliding_window": 64},
    "vision_config": {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                      "image_size": 28, "patch_size": 14},
    "mm_tokens_per_image": 4,
}


def build_ltx2_transformer(size: Size = "tiny", dtype: torch.dtype = torch.float32,
                           device: str | torch.device | None = None, seed: int = 0):
    """LTX-2's audio-video transformer; "full" is diffusers' default config, the 19B LTX-2 (48 layers, a 32 x 128
    video stream and a 32 x 64 audio stream): build it on the GPU or the meta device."""
    from diffusers import LTX2VideoTransformer3DModel

    with _seeded_construction(seed, dtype, device):
        return LTX2VideoTransformer3DModel(**(_TINY_LTX2_TRANSFORMER if _is_tiny(size) else {}))


def build_ltx2_pipeline(size: Size = "tiny", seed: int = 0, dtype: torch.dtype = torch.float32, version: str = "2.0"):
    """Every component of an ``LTX2Pipeline``: video and audio VAEs, vocoder, Gemma 3 with its tokenizer, the text
    connectors, the transformer and the scheduler Lightricks ships."""
    from diffusers import AutoencoderKLLTX2Audio, AutoencoderKLLTX2Video, LTX2Pipeline
    from diffusers.pipelines.ltx2 import LTX2TextConnectors, LTX2Vocoder
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    if version not in LTX2_VERSIONS:
        raise ValueError(f"LTX-2 version must be one of {LTX2_VERSIONS}, got {version!r}")
    if not _is_tiny(size):
        raise ValueError("a full-size LTX-2 pipeline holds a 12B Gemma 3: build the transformer alone with "
                         "build_ltx2_transformer('full', device='cuda' or 'meta')")
    with _seeded_construction(seed, dtype, None):
        components = {
            "vae": AutoencoderKLLTX2Video(**_TINY_LTX2_VAE),
            "audio_vae": AutoencoderKLLTX2Audio(**_TINY_LTX2_AUDIO_VAE),
            "vocoder": LTX2Vocoder(**_TINY_LTX2_VOCODER),
            "connectors": LTX2TextConnectors(**_TINY_LTX2_CONNECTORS),
            "text_encoder": Gemma3ForConditionalGeneration(Gemma3Config(**_TINY_GEMMA)),
        }
    return LTX2Pipeline(scheduler=_build_scheduler("0.9.1"), tokenizer=build_gemma_tokenizer(),
                        transformer=build_ltx2_transformer(size, dtype, seed=seed), **components)


def build_gemma_tokenizer():
    """A Gemma-style BPE tokenizer (<bos> first, byte fallback, left padding) whose merges spell the corpus words."""
    from transformers import GemmaTokenizer

    vocab = {token: i for i, token in enumerate(("<pad>", "<eos>", "<bos>", "<unk>", "<mask>"))}
    for char in "▁" + string.ascii_letters + string.digits + string.punctuation:
        vocab.setdefault(char, len(vocab))
    for byte in range(256):
        vocab[f"<0x{byte:02X}>"] = len(vocab)
    merges = []
    for word in sorted(set(_CORPUS_WORD.findall(" ".join(_corpus())))):
        piece = "▁"
        for char in word:
            merges.append((piece, char))
            piece += char
            vocab.setdefault(piece, len(vocab))
    if len(vocab) > TINY_GEMMA_VOCAB_SIZE:
        raise AssertionError(f"the tiny Gemma vocabulary grew to {len(vocab)} pieces, past its embedding")
    return GemmaTokenizer(vocab=vocab, merges=list(dict.fromkeys(merges)), add_bos_token=True)


def write_pipeline(
    out_dir: str | Path, size: Size = "tiny", seed: int = 0, dtype: torch.dtype = torch.float32,
    version: str | None = None, family: Family = "ltx_video", overwrite: bool = False,
) -> Path:
    """Write a diffusers pipeline directory that loads like the real one of ``family`` and ``version``.

    LTX-Video versions are :data:`VERSIONS` (default 0.9.0; 0.9.7-13b is written as an ``LTXConditionPipeline``, as
    Lightricks ships it); LTX-2 (``family="ltx2"``) is an ``LTX2Pipeline`` of :data:`LTX2_VERSIONS`. The directory is
    built beside `out_dir` and renamed into place, so a crash never leaves a half-written model. An existing `out_dir`
    is replaced only if it is empty or a model written here before, or with `overwrite`.
    """
    from diffusers import LTXConditionPipeline

    _check_replaceable(Path(out_dir).absolute(), overwrite)
    if family == "ltx2":
        return _save_atomically(build_ltx2_pipeline(size, seed, dtype, version or "2.0"), out_dir)
    if family != "ltx_video":
        raise ValueError(f"family must be 'ltx_video' or 'ltx2', got {family!r}")
    version = version or "0.9.0"
    cls = LTXConditionPipeline if version == "0.9.7-13b" else LTXPipeline
    pipeline = cls(
        scheduler=_build_scheduler(version),
        vae=build_vae(size, dtype, seed=seed, version=version),
        text_encoder=build_text_encoder(size, dtype=dtype, seed=seed),
        tokenizer=build_tokenizer(),
        transformer=build_transformer(size, dtype, seed=seed, version=version),
    )
    return _save_atomically(pipeline, out_dir)


def _save_atomically(pipeline, out_dir: str | Path) -> Path:
    out_dir = Path(out_dir).absolute()
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


#: diffusers' transformer names -> Lightricks' original ones (the inverse of diffusers' single-file conversions of
#: LTX-Video and LTX-2; the av_/a2v names exist in LTX-2 only).
_ORIGINAL_NAMES = {
    "proj_in": "patchify_proj", "time_embed": "adaln_single", "norm_q": "q_norm", "norm_k": "k_norm",
    "av_cross_attn_video_scale_shift": "av_ca_video_scale_shift_adaln_single",
    "av_cross_attn_video_a2v_gate": "av_ca_a2v_gate_adaln_single",
    "av_cross_attn_audio_scale_shift": "av_ca_audio_scale_shift_adaln_single",
    "av_cross_attn_audio_v2a_gate": "av_ca_v2a_gate_adaln_single",
    "video_a2v_cross_attn_scale_shift_table": "scale_shift_table_a2v_ca_video",
    "audio_a2v_cross_attn_scale_shift_table": "scale_shift_table_a2v_ca_audio",
}


def write_single_file(pipeline_dir: str | Path, out_path: str | Path) -> Path:
    """The transformer of a pipeline folder (LTX-Video or LTX-2) as a Lightricks single-file checkpoint
    (``model.diffusion_model.*`` keys in the original naming), as ``ltxv-*.safetensors`` and ``ltx-2-*.safetensors``
    files are published."""
    from safetensors.torch import load_file, save_file

    folder = Path(pipeline_dir) / "transformer"
    state: dict[str, torch.Tensor] = {}
    for shard in sorted(folder.glob("*.safetensors")):
        state.update(load_file(shard))
    renamed = {}
    for key, tensor in state.items():
        for new, old in _ORIGINAL_NAMES.items():
            key = key.replace(new, old)
        renamed["model.diffusion_model." + key] = tensor.contiguous()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    save_file(renamed, str(out_path), metadata={"format": "pt"})
    return out_path


def _check(size: str, version: str) -> None:
    _is_tiny(size)
    if version not in VERSIONS:
        raise ValueError(f"version must be one of {VERSIONS}, got {version!r}")


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
