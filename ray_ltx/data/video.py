"""Decode user videos and images into fixed-size RGB clips.

Preprocessing runs for hours over thousands of user files, so every call here opens its file,
streams through it one frame at a time and closes it again: memory stays at the size of the clip
being built and no file descriptor outlives a call. Whatever a broken file can do wrong surfaces
as a :class:`MediaError` whose ``reason`` becomes the skip reason in the cache manifest.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import BinaryIO, Literal, TypeAlias, get_args

import av
import numpy as np
from PIL import Image, ImageOps

from ray_ltx.buckets import Bucket

#: A path, the file's bytes, or a binary file object (read from its current position, which is restored).
MediaSource: TypeAlias = str | os.PathLike | bytes | BinaryIO

MediaErrorReason = Literal["missing_file", "empty_file", "unreadable", "no_video_stream", "truncated"]

SamplingMode = Literal["uniform", "fps", "stride"]

# Still images are told apart by their first bytes rather than their name, so bytes and file
# objects work too; anything else (gif included) goes to FFmpeg.
_IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "BMP")
_HEADER_SIZE = 12



class MediaError(Exception):
    """A file that cannot become a training sample; ``reason`` is a short code for the manifest."""

    def __init__(self, reason: MediaErrorReason, source: str, detail: str) -> None:
        if reason not in get_args(MediaErrorReason):
            raise ValueError(f"unknown media error reason {reason!r}")
        super().__init__(f"{source}: {detail}")
        self.reason = reason
        self.source = source
        self.detail = detail

    def __reduce__(self) -> tuple[type[MediaError], tuple[str, str, str]]:
        # Ray ships exceptions between processes by pickling; the default would call
        # __init__ with the formatted message alone.
        return (type(self), (self.reason, self.source, self.detail))


@dataclass(frozen=True)
class MediaInfo:
    """What bucket assignment needs to know about a file, as it is displayed (rotation applied).

    ``fps`` is 0.0 for still images, which have no frame rate.
    """

    num_frames: int
    fps: float
    height: int
    width: int
    is_image: bool


def probe(source: MediaSource) -> MediaInfo:
    """Read a file's frame count, frame rate and size without decoding the clip.

    The first frame is decoded anyway: it proves the stream decodes at all, and only a decoded
    frame carries the display rotation that phone videos rely on to be shown upright.
    """
    name = _describe(source)
    with _opened(source) as (src, header):
        if _is_image(header):
            image = _load_image(src, name)
            return MediaInfo(num_frames=1, fps=0.0, height=image.height, width=image.width, is_image=True)
        with _open_video(src, name) as (container, stream):
            return _probe_video(container, stream, name)


def sample_frame_indices(
    num_frames: int,
    target_frames: int,
    fps: float,
    *,
    mode: SamplingMode = "uniform",
    sample_fps: float | None = None,
    stride: int | None = None,
) -> list[int]:
    """Choose which ``target_frames`` frames of a ``num_frames`` clip make up the training clip.

    ``"uniform"`` spreads them over the whole clip, first and last included, so the clip's full
    motion is seen (sped up). ``"fps"`` resamples the clip to ``sample_fps`` from its start, so
    motion keeps one real-time speed across clips of different frame rates. ``"stride"`` takes every
    ``stride``-th frame from the start. The indices are strictly increasing and all below
    ``num_frames``; a clip too short for the request raises ``ValueError``.
    """
    if target_frames < 1:
        raise ValueError(f"target_frames must be at least 1, got {target_frames}")
    if num_frames < target_frames:
        raise ValueError(f"the clip has {num_frames} frames, fewer than the {target_frames} needed")
    if mode == "uniform":
        if target_frames == 1:
            return [0]
        span, gaps = num_frames - 1, target_frames - 1
        # Integer round-half-up of i * span / gaps: exact, so identical on every machine.
        return [(2 * i * span + gaps) // (2 * gaps) for i in range(target_frames)]
    if mode == "fps":
        if sample_fps is None or sample_fps <= 0:
            raise ValueError(f"mode 'fps' needs a positive sample_fps, got {sample_fps}")
        if fps <= 0:
            raise ValueError("mode 'fps' needs the clip's frame rate, which is unknown")
        step = fps / sample_fps
        indices = [math.floor(i * step + 0.5) for i in range(target_frames)]
        if len(set(indices)) < target_frames:
            raise ValueError(f"sample_fps {sample_fps:g} is above the clip's {fps:g} fps; frames would repeat")
        needed = f"at {sample_fps:g} fps from a {fps:g} fps clip"
    elif mode == "stride":
        if stride is None or stride < 1:
            raise ValueError(f"mode 'stride' needs a stride of at least 1, got {stride}")
        indices = [i * stride for i in range(target_frames)]
        needed = f"with stride {stride}"
    else:
        raise ValueError(f"unknown sampling mode {mode!r}; use 'uniform', 'fps' or 'stride'")
    if indices[-1] >= num_frames:
        raise ValueError(
            f"the clip has {num_frames} frames; {target_frames} frames {needed} need {indices[-1] + 1}"
        )
    return indices


def decode_frames(source: MediaSource, indices: Sequence[int], height: int, width: int) -> np.ndarray:
    """Decode the frames at ``indices`` as an ``(len(indices), height, width, 3)`` uint8 RGB array.

    The stream is decoded once from the start and only the requested frames are converted and
    kept, so memory is the output array plus one frame. Each frame is scaled so it covers
    ``height x width`` and then centre-cropped: the aspect ratio is kept and what is lost is the
    overhanging edges. Indices may repeat and come in any order. A still image has only frame 0,
    which is repeated.
    """
    if height < 1 or width < 1:
        raise ValueError(f"height and width must be positive, got {height}x{width}")
    if any(index < 0 for index in indices):
        raise ValueError(f"frame indices must be non-negative, got {list(indices)}")
    clip = np.empty((len(indices), height, width, 3), dtype=np.uint8)
    if not indices:
        return clip
    slots: dict[int, list[int]] = {}
    for slot, index in enumerate(indices):
        slots.setdefault(index, []).append(slot)
    last = max(slots)
    name = _describe(source)
    with _opened(source) as (src, header):
        if _is_image(header):
            if last > 0:
                raise ValueError(f"{name} is a still image with only frame 0; frame {last} was asked for")
            clip[:] = _fit(av.VideoFrame.from_image(_load_image(src, name)), height, width)
            return clip
        with _open_video(src, name) as (container, stream):
            decoded = 0
            for index, frame in enumerate(_decoded_frames(container, stream, name)):
                decoded = index + 1
                if index in slots:
                    clip[slots[index]] = _fit(frame, height, width)
                if index == last:
                    return clip
    raise MediaError("truncated", name, f"the video ends after {decoded} frames, before frame {last}")


def decode_clip(
    source: MediaSource,
    bucket: Bucket,
    *,
    mode: SamplingMode = "uniform",
    sample_fps: float | None = None,
    stride: int | None = None,
) -> np.ndarray:
    """Decode a file into a ``(frames, height, width, 3)`` uint8 clip of ``bucket``'s shape.

    A still image becomes a clip of that image repeated, as many frames as the bucket holds.
    Raises ``ValueError`` if the video is too short for the bucket under the sampling mode.
    """
    info = probe(source)
    if info.is_image:
        indices = [0] * bucket.frames
    else:
        indices = sample_frame_indices(
            info.num_frames, bucket.frames, info.fps, mode=mode, sample_fps=sample_fps, stride=stride
        )
    return decode_frames(source, indices, bucket.height, bucket.width)


def _describe(source: MediaSource) -> str:
    if isinstance(source, str | os.PathLike):
        return os.fsdecode(source)
    if isinstance(source, bytes):
        return f"<{len(source)} bytes>"
    return str(getattr(source, "name", "<file object>"))


@contextmanager
def _opened(source: MediaSource) -> Iterator[tuple[str | BinaryIO, bytes]]:
    """Yield something PIL and FFmpeg can open, with the file's first bytes to tell images apart."""
    name = _describe(source)
    if isinstance(source, str | os.PathLike):
        path = os.fsdecode(source)
        try:
            with open(path, "rb") as file:
                header = file.read(_HEADER_SIZE)
        except FileNotFoundError as err:
            raise MediaError("missing_file", name, "no such file") from err
        except OSError as err:
            raise MediaError("unreadable", name, f"cannot be read ({err.strerror})") from err
        if not header:
            raise MediaError("empty_file", name, "the file is empty (0 bytes)")
        yield path, header
    elif isinstance(source, bytes):
        if not source:
            raise MediaError("empty_file", name, "no bytes were given")
        yield io.BytesIO(source), source[:_HEADER_SIZE]
    else:
        start = source.tell()
        header = source.read(_HEADER_SIZE)
        source.seek(start)
        if not header:
            raise MediaError("empty_file", name, "the file object has nothing left to read")
        try:
            yield source, header
        finally:
            source.seek(start)


def _is_image(header: bytes) -> bool:
    return (
        header.startswith((b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"BM"))
        or (header[:4] == b"RIFF" and header[8:12] == b"WEBP")
    )


def _load_image(src: str | BinaryIO, name: str) -> Image.Image:
    """Decode a still image as RGB, turned upright by its EXIF orientation like any photo viewer does."""
    try:
        with Image.open(src, formats=_IMAGE_FORMATS) as image:
            return ImageOps.exif_transpose(image).convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise MediaError("unreadable", name, f"not a readable image ({err})") from err


def _av_open(src: str | BinaryIO) -> av.container.InputContainer:
    try:
        # Badly encoded metadata tags are common in user files and irrelevant here.
        return av.open(src, metadata_errors="ignore")
    except TypeError:  # PyAV releases without the argument decode metadata leniently already
        return av.open(src)


@contextmanager
def _open_video(
    src: str | BinaryIO, name: str
) -> Iterator[tuple[av.container.InputContainer, av.video.stream.VideoStream]]:
    try:
        container = _av_open(src)
    except av.FFmpegError as err:
        raise MediaError("unreadable", name, f"not a readable video ({err.strerror})") from err
    with container:
        if not container.streams.video:
            raise MediaError("no_video_stream", name, "has no video stream (audio only?)")
        yield container, container.streams.video[0]


def _probe_video(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, name: str
) -> MediaInfo:
    num_frames = _indexed_frame_count(container, stream, name)
    first: av.VideoFrame | None = None
    packets = 0
    try:
        for packet in container.demux(stream):
            if first is None:
                first = next(iter(packet.decode()), None)
            # The demuxer ends with an empty packet that only flushes the decoder.
            if packet.size and not packet.is_discard:
                packets += 1
            if first is not None and num_frames is not None:
                break
    except av.FFmpegError as err:
        reason = "truncated" if first is not None else "unreadable"
        raise MediaError(reason, name, f"demuxing failed after {packets} frames ({err.strerror})") from err
    if first is None:
        raise MediaError("unreadable", name, "the video stream has no decodable frame")
    height, width = first.height, first.width
    if _rotation(first) in (90, 270):
        height, width = width, height
    rate = stream.average_rate or stream.guessed_rate
    return MediaInfo(
        num_frames=packets if num_frames is None else num_frames,
        fps=float(rate) if rate else 0.0,
        height=height,
        width=width,
        is_image=False,
    )


def _indexed_frame_count(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, name: str
) -> int | None:
    """The frame count from a sample index listing every frame (mp4, mov, avi), else ``None``.

    Such an index is exact and costs no demuxing. It also gives away a file cut short, with
    frames indexed past its end. Containers without one (webm, gif, ts) report no or an
    estimated count, so the caller counts packets instead.
    """
    entries = stream.index_entries
    if stream.frames <= 0 or len(entries) != stream.frames:
        return None
    if container.size > 0 and max(entry.pos + entry.size for entry in entries) > container.size:
        raise MediaError(
            "truncated", name, f"the file ends before the last of the {stream.frames} frames its index lists"
        )
    # Frames an edit list cuts away are indexed but never come out of the decoder.
    return sum(not entry.is_discard for entry in entries)


def _decoded_frames(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, name: str
) -> Iterator[av.VideoFrame]:
    """Frames in display order; a decoder error after some good frames means the data stops short."""
    decoded = 0
    try:
        for frame in container.decode(stream):
            decoded += 1
            yield frame
    except av.FFmpegError as err:
        reason = "truncated" if decoded else "unreadable"
        raise MediaError(reason, name, f"decoding failed after {decoded} frames ({err.strerror})") from err


def _rotation(frame: av.VideoFrame) -> int:
    """The counter-clockwise turn, in degrees, that shows the frame upright (phone videos store one)."""
    return round(frame.rotation / 90) * 90 % 360


def _fit(frame: av.VideoFrame, height: int, width: int) -> np.ndarray:
    """Turn a frame upright, scale it to cover ``height x width`` and crop the centre.

    swscale converts to RGB and resamples in one pass, several times faster than PIL after a
    separate conversion; area averaging when shrinking (no aliasing), bicubic when enlarging.
    Rounding the scaled size can leave the crop half a pixel off centre.
    """
    rotation = _rotation(frame)
    quarter_turn = rotation in (90, 270)
    shown_height, shown_width = (frame.width, frame.height) if quarter_turn else (frame.height, frame.width)
    scale = max(height / shown_height, width / shown_width)
    scaled_height = max(height, round(shown_height * scale))
    scaled_width = max(width, round(shown_width * scale))
    rgb = frame.to_ndarray(
        format="rgb24",
        width=scaled_height if quarter_turn else scaled_width,
        height=scaled_width if quarter_turn else scaled_height,
        interpolation="AREA" if scale < 1 else "BICUBIC",
    )
    rgb = np.rot90(rgb, rotation // 90)
    top, left = (scaled_height - height) // 2, (scaled_width - width) // 2
    return rgb[top : top + height, left : left + width]
