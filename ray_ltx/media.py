"""Writing and reading media with PyAV and Pillow: videos, images and first-frame conditioning images.

Shared by the sample-data generator, validation and ``generate``; every file appears under its name only
once complete.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

# Candidate encoders per extension, best first, with options that favour speed at high quality;
# the first one this PyAV build can encode with is used.
_ENCODERS: dict[str, tuple[tuple[str, dict[str, str]], ...]] = {
    ".mp4": (("libx264", {"crf": "18", "preset": "veryfast"}), ("h264", {"b": "4M"}), ("mpeg4", {"b": "4M"})),
    ".mov": (("libx264", {"crf": "18", "preset": "veryfast"}), ("h264", {"b": "4M"}), ("mpeg4", {"b": "4M"})),
    ".webm": (
        ("libvpx-vp9", {"crf": "20", "b": "0", "deadline": "realtime", "cpu-used": "8"}),
        ("libvpx", {"crf": "8", "b": "4M", "deadline": "realtime", "cpu-used": "8"}),
    ),
    ".gif": (("gif", {}),),
}
# The index goes in front, as on the web: readers need not seek to the end, and a file cut short
# still says how many frames it should have had.
_AUDIO_LAYOUTS = {1: "mono", 2: "stereo"}
_CONTAINER_OPTIONS = {".mp4": {"movflags": "+faststart"}, ".mov": {"movflags": "+faststart"}}

def write_video(path: str | os.PathLike, frames: np.ndarray, fps: float = 24, audio: np.ndarray | None = None,
                sample_rate: int = 16000) -> Path:
    """Encode ``(F, H, W, 3)`` uint8 RGB frames to ``path``, choosing the codec by its extension.

    ``.mp4``/``.mov`` get H.264 (MPEG-4 part 2 where the PyAV build lacks an H.264 encoder),
    ``.webm`` VP9 (else VP8), ``.gif`` a per-frame palette. All but gif store yuv420p, which needs
    an even height and width. GIF stores delays in hundredths of a second, so 24 fps is read back
    as about 24 or 25. ``audio`` ((channels, samples) float in [-1, 1] at ``sample_rate``) becomes an AAC
    track (mp4/mov only). The file appears under its name only once complete.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in _ENCODERS:
        raise ValueError(f"cannot write {path.name}: use one of {', '.join(_ENCODERS)}")
    frames = _check_frames(frames)
    _, height, width, _ = frames.shape
    codec, options = _first_encoder(suffix)
    is_gif = codec == "gif"
    if not is_gif and (height % 2 or width % 2):
        raise ValueError(f"{codec} stores yuv420p, which needs even sides; got {height}x{width}, crop a pixel")
    with atomic_path(path) as temporary, av.open(
        str(temporary), "w", container_options=_CONTAINER_OPTIONS.get(suffix, {})
    ) as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001), options=options)
        stream.width, stream.height = width, height
        stream.pix_fmt = "pal8" if is_gif else "yuv420p"
        audio_stream = None if audio is None else container.add_stream("aac", rate=sample_rate,
                                                                        layout=_AUDIO_LAYOUTS[len(audio)])
        for array in frames:
            frame = _palette_frame(array) if is_gif else av.VideoFrame.from_ndarray(array, format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
        if audio_stream is not None:
            _mux_audio(container, audio_stream, np.asarray(audio, dtype=np.float32), sample_rate)
    return path


def _mux_audio(container, stream, audio: np.ndarray, sample_rate: int) -> None:
    layout = _AUDIO_LAYOUTS[len(audio)]
    size = stream.codec_context.frame_size or 1024  # AAC's frame
    for start in range(0, audio.shape[1], size):
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(audio[:, start:start + size]), format="fltp",
                                           layout=layout)
        frame.sample_rate, frame.pts = sample_rate, start
        container.mux(stream.encode(frame))
    container.mux(stream.encode())


def write_image(path: str | os.PathLike, frame: np.ndarray) -> Path:
    """Save one ``(H, W, 3)`` uint8 RGB frame as an image (format by extension, JPEG at quality 95)."""
    path = Path(path)
    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 frame, got {frame.shape} {frame.dtype}")
    with atomic_path(path) as temporary:
        Image.fromarray(frame).save(temporary, quality=95)
    return path


def write_mp4(frames, path: str | Path, fps: int) -> Path:
    """Frames as a pipeline returns them (``(F, H, W, 3)`` floats in [0, 1] or uint8) into an H.264 mp4: what
    ``diffusers.utils.export_to_video`` does, through PyAV."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8:
        frames = (np.clip(frames, 0.0, 1.0) * 255).round().astype(np.uint8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_video(path, frames, fps=fps)


def load_image(path: str, height: int, width: int) -> Image.Image:
    """A first-frame image, resized and centre-cropped to (height, width) if its aspect ratio differs."""
    from PIL import UnidentifiedImageError

    from ray_ltx.errors import ConfigError

    try:
        with Image.open(path) as opened:
            image = opened.convert("RGB")
    except (OSError, UnidentifiedImageError) as error:
        raise ConfigError(f"image {path}: cannot be read as an image ({error})") from None
    return fit_image(image, height, width, path)


def fit_image(image: Image.Image, height: int, width: int, name: str = "image") -> Image.Image:
    """Scale to cover (height, width), then centre-crop: the bucket's framing, as clips are prepared."""
    w, h = image.size
    if abs(w / h - width / height) > 0.01:
        log.info("%s: aspect ratio %.3f differs from %dx%d (%.3f): scaled to cover it and centre-cropped", name,
                 w / h, width, height, width / height)
    scale = max(width / w, height / h)
    resized = image.resize((max(width, round(w * scale)), max(height, round(h * scale))))
    left, top = (resized.width - width) // 2, (resized.height - height) // 2
    return resized.crop((left, top, left + width, top + height))


def _check_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[3] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
        raise ValueError(f"expected (F, H, W, 3) uint8 frames with F >= 1, got {frames.shape} {frames.dtype}")
    return frames


def _first_encoder(suffix: str) -> tuple[str, dict[str, str]]:
    for name, options in _ENCODERS[suffix]:
        try:
            av.Codec(name, "w")
        except av.codec.codec.UnknownCodecError:
            continue
        return name, options
    names = ", ".join(name for name, _ in _ENCODERS[suffix])
    raise RuntimeError(f"this PyAV build has none of the encoders for {suffix}: {names}")


def _palette_frame(array: np.ndarray) -> av.VideoFrame:
    """A pal8 frame with the frame's own palette: FFmpeg's rgb8 fallback would shift every colour."""
    quantized = Image.fromarray(array).quantize(256)
    palette = np.zeros((256, 4), dtype=np.uint8)
    rgb = np.asarray(quantized.getpalette(), dtype=np.uint8).reshape(-1, 3)
    palette[: len(rgb), 1:] = rgb
    palette[:, 0] = 255  # PyAV takes the palette as ARGB: fully opaque
    return av.VideoFrame.from_ndarray((np.asarray(quantized), palette), format="pal8")


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a hidden sibling of ``path`` that replaces it only once written without error.

    A crash or a concurrent reader then never sees a half-written file under the real name. The
    sibling keeps the extension, from which PyAV and PIL pick the format.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.tmp{path.suffix}")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
