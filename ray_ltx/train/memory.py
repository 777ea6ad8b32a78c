"""Memory accounting at the stages the finetrainers tables report (GiB).

On CUDA: ``memory_allocated`` and ``max_memory_reserved`` of the worker's device. On CPU workers
the same columns hold the process's resident memory and its peak, so the table is never empty.
"""

from __future__ import annotations

import json
import resource
from dataclasses import dataclass, field

import torch

GIB = 1024**3


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize()


def memory_now(device: torch.device) -> tuple[float, float]:
    """(allocated, max reserved) in GiB."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device) / GIB, torch.cuda.max_memory_reserved(device) / GIB
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return _rss_bytes() / GIB, peak_kib * 1024 / GIB


MEMORY_MD = "memory.md"
MEMORY_JSON = "memory.json"


@dataclass
class MemoryReport:
    device: torch.device
    rows: list[dict[str, float | str]] = field(default_factory=list)

    def record(self, stage: str) -> dict[str, float | str]:
        allocated, reserved = memory_now(self.device)
        row = {"stage": stage, "memory_allocated": round(allocated, 3), "max_memory_reserved": round(reserved, 3)}
        self.rows.append(row)
        return row

    @property
    def unit_note(self) -> str:
        if self.device.type == "cuda":
            return f"GiB on {torch.cuda.get_device_name(self.device)}"
        return "GiB, CPU worker: process resident memory and its peak"

    def to_markdown(self) -> str:
        lines = [
            f"Memory ({self.unit_note})",
            "",
            "| stage | memory_allocated | max_memory_reserved |",
            "|:-----:|:----------------:|:-------------------:|",
        ]
        lines += [f"| {r['stage']} | {r['memory_allocated']:.3f} | {r['max_memory_reserved']:.3f} |" for r in self.rows]
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps({"unit": self.unit_note, "rows": self.rows}, indent=1)

    def max_reserved(self) -> float:
        return max((float(r["max_memory_reserved"]) for r in self.rows), default=0.0)
