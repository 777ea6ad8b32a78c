"""Resolution buckets (``FxHxW``) and the rule that assigns each clip to one."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

_BUCKET_RE = re.compile(r"^\s*(\d+)\s*x\s*(\d+)\s*x\s*(\d+)\s*$")

#: LTX-Video's VAE compresses 8 frames and 32x32 pixels into one latent cell.
FRAME_MULTIPLE = 8
SIDE_MULTIPLE = 32


@dataclass(frozen=True, order=True)
class Bucket:
    """A target clip shape: frame count, height and width in pixels."""

    frames: int
    height: int
    width: int

    @classmethod
    def parse(cls, text: str) -> Bucket:
        """Parse ``"49x512x768"`` (frames x height x width) and check the LTX-Video constraints."""
        match = _BUCKET_RE.match(str(text))
        if not match:
            raise ValueError(f"{text!r} is not of the form FRAMESxHEIGHTxWIDTH, e.g. 49x512x768")
        bucket = cls(*(int(g) for g in match.groups()))
        bucket.check()
        return bucket

    def check(self) -> None:
        problems = []
        if self.frames < 1 or (self.frames - 1) % FRAME_MULTIPLE:
            problems.append(f"frames {self.frames} must be {FRAME_MULTIPLE}k+1 (1, 9, 17, ..., 49, ...)")
        for side, value in (("height", self.height), ("width", self.width)):
            if value < SIDE_MULTIPLE or value % SIDE_MULTIPLE:
                problems.append(f"{side} {value} must be a positive multiple of {SIDE_MULTIPLE}")
        if problems:
            raise ValueError(f"bucket {self}: " + "; ".join(problems))

    @property
    def aspect(self) -> float:
        return self.width / self.height

    @property
    def is_image(self) -> bool:
        return self.frames == 1

    def __str__(self) -> str:
        return f"{self.frames}x{self.height}x{self.width}"


def assign_bucket(num_frames: int, height: int, width: int, buckets: list[Bucket]) -> Bucket | None:
    """Pick the bucket that loses the least of a clip, or ``None`` if the clip fills none.

    First the largest frame count the clip can fill (fewest frames thrown away), then, among
    buckets with that frame count, the closest aspect ratio (least cropped away, compared in
    log space so 2:1 and 1:2 are equally far from 1:1), then the larger area.
    """
    fitting = [b for b in buckets if b.frames <= num_frames]
    if not fitting or height <= 0 or width <= 0:
        return None
    frames = max(b.frames for b in fitting)
    clip_aspect = math.log(width / height)
    candidates = [b for b in fitting if b.frames == frames]
    return min(candidates, key=lambda b: (abs(math.log(b.aspect) - clip_aspect), -b.height * b.width))
