"""Small, really encoded sample media: a shape moving across a plain background.

Tests and the demo need files that go through the same decoders as user data (H.264 in mp4,
VP9 in webm, gif, png, jpg) without downloading anything. These clips take milliseconds to write
and are simple enough for a caption to describe exactly.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import numpy as np

from ray_ltx.media import atomic_path, write_video

Shape = Literal["circle", "square", "triangle"]
Direction = Literal["left", "right", "up", "down", "diagonal"]
RGB = tuple[int, int, int]

_SAMPLE_SIZES = ((96, 128), (128, 96), (96, 96), (128, 192))  # landscape, portrait, square, wide
_SAMPLE_SHAPES: tuple[Shape, ...] = ("circle", "square", "triangle")
_SAMPLE_MOTIONS: dict[Direction, str] = {
    "right": "moves from left to right",
    "left": "moves from right to left",
    "up": "rises from the bottom to the top",
    "down": "sinks from the top to the bottom",
    "diagonal": "glides diagonally from the top left to the bottom right",
}
# Bright shapes on dark backgrounds, so every pair contrasts.
_SAMPLE_COLORS: tuple[tuple[str, RGB], ...] = (
    ("red", (220, 40, 40)),
    ("orange", (245, 140, 30)),
    ("yellow", (240, 220, 50)),
    ("green", (60, 200, 80)),
    ("light blue", (110, 180, 250)),
    ("white", (245, 245, 245)),
)
_SAMPLE_BACKGROUNDS: tuple[tuple[str, RGB], ...] = (
    ("black", (10, 10, 10)),
    ("dark blue", (20, 30, 90)),
    ("dark grey", (60, 60, 60)),
    ("dark purple", (60, 20, 80)),
)


def moving_shape_frames(
    num_frames: int,
    height: int,
    width: int,
    *,
    shape: Shape = "circle",
    color: RGB = (220, 40, 40),
    background: RGB = (20, 30, 90),
    direction: Direction = "right",
    seed: int = 0,
) -> np.ndarray:
    """Render a ``(num_frames, height, width, 3)`` uint8 clip of ``shape`` crossing a plain background.

    The shape travels at constant speed from one side to the other, staying wholly inside the
    frame, with anti-aliased edges so the motion is smooth rather than jumping whole pixels.
    ``seed`` varies its size and the line it travels along.
    """
    if num_frames < 1 or height < 1 or width < 1:
        raise ValueError(f"need at least one frame of at least 1x1 pixels, got {num_frames}x{height}x{width}")
    rng = np.random.default_rng(seed)
    radius = min(height, width) * rng.uniform(0.15, 0.22)
    left, right, top, bottom = radius, width - radius, radius, height - radius
    across = rng.uniform(0.35, 0.65)
    mid_x, mid_y = left + across * (right - left), top + across * (bottom - top)
    start, end = {
        "right": ((left, mid_y), (right, mid_y)),
        "left": ((right, mid_y), (left, mid_y)),
        "down": ((mid_x, top), (mid_x, bottom)),
        "up": ((mid_x, bottom), (mid_x, top)),
        "diagonal": ((left, top), (right, bottom)),
    }[direction]
    signed_distance = {"circle": _circle, "square": _square, "triangle": _triangle}[shape]
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5  # pixel centres
    base = np.asarray(background, dtype=np.float32)
    delta = np.asarray(color, dtype=np.float32) - base
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    for i, t in enumerate(np.linspace(0.0, 1.0, num_frames)):
        cx, cy = start[0] + t * (end[0] - start[0]), start[1] + t * (end[1] - start[1])
        coverage = np.clip(signed_distance(xs - cx, ys - cy, radius) + 0.5, 0.0, 1.0)
        frames[i] = np.rint(base + coverage[..., None] * delta)
    return frames


def _circle(dx: np.ndarray, dy: np.ndarray, radius: float) -> np.ndarray:
    return radius - np.hypot(dx, dy)


def _square(dx: np.ndarray, dy: np.ndarray, radius: float) -> np.ndarray:
    # Side 1.6 radius, so the square's area is close to the circle's.
    return 0.8 * radius - np.maximum(np.abs(dx), np.abs(dy))


def _triangle(dx: np.ndarray, dy: np.ndarray, radius: float) -> np.ndarray:
    # Equilateral, apex up, inscribed in the circle: inradius r/2, outward edge normals
    # (0, 1) and (+-sqrt(3)/2, -1/2) in image coordinates (y grows downwards).
    half_root3 = np.sqrt(3.0) / 2
    outward = np.maximum(dy, np.maximum(half_root3 * dx - 0.5 * dy, -half_root3 * dx - 0.5 * dy))
    return radius / 2 - outward


def tone(seconds: float, hz: float = 440.0, sample_rate: int = 16000) -> np.ndarray:
    """A (1, samples) float32 sine tone at a third of full scale."""
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    return (np.sin(2 * np.pi * hz * t) / 3).astype(np.float32)[None]


def write_sample_dataset(
    out_dir: str | os.PathLike, *, num_clips: int = 8, seed: int = 0, id_token: str | None = None, audio: bool = False
) -> Path:
    """Write a small finetrainers-layout dataset of captioned clips to ``out_dir`` and return it.

    ``videos/NNN_<shape>.mp4`` at 24 fps in landscape, portrait, square and wide sizes (all
    cropable to 64x96 buckets), the first 49 frames long and the rest alternating between 9-16
    and 17-32 frames, so every common bucket length has clips; ``prompts.txt`` holds one caption
    per line (prefixed with ``id_token`` when given) and ``videos.txt`` the matching paths,
    relative to ``out_dir``. With ``audio`` every clip has a mono AAC track: a tone whose pitch rises with the clip's
    index. The same seed writes the same dataset.
    """
    if num_clips < 1:
        raise ValueError(f"num_clips must be at least 1, got {num_clips}")
    out_dir = Path(out_dir)
    (out_dir / "videos").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    directions = list(_SAMPLE_MOTIONS)
    prompts, videos = [], []
    for i in range(num_clips):
        shape = _SAMPLE_SHAPES[i % len(_SAMPLE_SHAPES)]
        height, width = _SAMPLE_SIZES[i % len(_SAMPLE_SIZES)]
        direction = directions[i % len(directions)]
        color_name, color = _SAMPLE_COLORS[rng.integers(len(_SAMPLE_COLORS))]
        background_name, background = _SAMPLE_BACKGROUNDS[rng.integers(len(_SAMPLE_BACKGROUNDS))]
        num_frames = 49 if i == 0 else int(rng.integers(9, 17) if i % 2 else rng.integers(17, 33))
        frames = moving_shape_frames(
            num_frames,
            height,
            width,
            shape=shape,
            color=color,
            background=background,
            direction=direction,
            seed=int(rng.integers(2**31)),
        )
        relative = f"videos/{i:03d}_{shape}.mp4"
        write_video(out_dir / relative, frames, fps=24, audio=tone(num_frames / 24, 220.0 * (i + 1)) if audio else None)
        article = "An" if color_name[0] in "aeiou" else "A"
        motion = _SAMPLE_MOTIONS[direction]
        caption = f"{article} {color_name} {shape} {motion} across a plain {background_name} background."
        prompts.append(f"{id_token} {caption}" if id_token else caption)
        videos.append(relative)
    for name, lines in (("prompts.txt", prompts), ("videos.txt", videos)):
        with atomic_path(out_dir / name) as temporary:
            temporary.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out_dir


