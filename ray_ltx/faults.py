"""Fault injection for reliability tests and drills: ``RAY_LTX_FAULT=<kind>@<step>[:<rank>]``.

The driver reads the variable into a ``FaultPlan`` and hands it to the workers with their spec (workers of an
already running cluster do not see the driver's environment). Kinds: ``raise`` (an exception in the training step), ``kill`` (the worker SIGKILLs itself),
``checkpoint`` (the worker dies half-way through writing a checkpoint), ``nan`` (the loss of that
step becomes NaN), ``infgrad`` (the loss stays finite but its gradients are infinite), ``oom`` (the step
runs out of GPU memory), ``shard`` (a preprocessing write task dies half-way through a shard; use
``shard@0``). Each fault fires once per run: a marker file in ``RAY_LTX_FAULT_DIR`` (default:
the run's storage folder) records that it fired, so the restarted worker goes on.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from pathlib import Path

KINDS = ("raise", "kill", "checkpoint", "nan", "infgrad", "oom", "shard")


class InjectedFault(RuntimeError):
    """The exception a ``raise`` fault throws."""


@dataclass(frozen=True)
class FaultPlan:
    """The fault a run is asked to inject (none by default), read once on the driver and handed to the workers.

    ``due`` answers at the places a fault can strike (the training step, a checkpoint write, a shard write); a
    plan with nothing planned answers ``None`` everywhere, and the training loop then calls nothing in its step.
    """

    kind: str | None = None
    step: int = 0
    rank: int = 0
    marker_dir: str = ""  # where the "fired" marker goes, so that a restarted worker goes on

    @classmethod
    def parse(cls, spec: str | None, marker_dir: str) -> FaultPlan:
        spec = (spec or "").strip()
        if not spec:
            return cls()
        kind, _, rest = spec.partition("@")
        step, _, rank = rest.partition(":")
        if kind not in KINDS or not step.isdigit() or not (rank or "0").isdigit():
            raise ValueError(f"RAY_LTX_FAULT={spec!r}: expected <kind>@<step>[:<rank>] with kind in {KINDS}")
        return cls(kind, int(step), int(rank or 0), os.environ.get("RAY_LTX_FAULT_DIR") or marker_dir)

    @classmethod
    def from_env(cls, marker_dir: str) -> FaultPlan:
        """``RAY_LTX_FAULT`` of this process (the driver's); a malformed value is refused here, before any work."""
        return cls.parse(os.environ.get("RAY_LTX_FAULT"), marker_dir)

    def __bool__(self) -> bool:
        return self.kind is not None

    def planned_for(self, rank: int, kinds: tuple[str, ...]) -> bool:
        return self.kind in kinds and self.rank == rank

    def due(self, kinds: tuple[str, ...], step: int, rank: int) -> str | None:
        """The planned kind, once, if it is one of ``kinds`` and due at this step and rank; the marker is written
        first."""
        if not self.planned_for(rank, kinds) or step != self.step:
            return None
        marker = Path(self.marker_dir) / f".fault-{self.kind}-{step}-{rank}.fired"
        if marker.exists():
            return None
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text("fired\n")
        return self.kind


STEP_KINDS = ("raise", "kill", "nan", "infgrad", "oom")


def step_injector(plan: FaultPlan, rank: int):
    """What the training step applies to its loss: ``None`` when nothing is planned in this rank's steps."""
    if not plan.planned_for(rank, STEP_KINDS):
        return None

    def inject(step: int, loss):
        kind = plan.due(STEP_KINDS, step, rank)
        if kind == "nan":
            return loss * float("nan")
        if kind == "infgrad":
            return infinite_gradient(loss)
        if kind:
            fire(kind, step)
        return loss

    return inject


def fire(kind: str, step: int) -> None:
    if kind == "raise":
        raise InjectedFault(f"fault injected by RAY_LTX_FAULT at step {step}")
    if kind == "oom":
        import torch

        raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate 20.00 GiB (injected at step {step})")
    os.kill(os.getpid(), signal.SIGKILL)


def infinite_gradient(loss):
    """``loss`` unchanged, but every gradient that flows back through it infinite (an overflow in backward)."""
    import torch

    class _Infinite(torch.autograd.Function):
        @staticmethod
        def forward(ctx, value):  # noqa: ARG004 - autograd's signature
            return value.view_as(value)

        @staticmethod
        def backward(ctx, grad):  # noqa: ARG004
            return grad * float("inf")

    return _Infinite.apply(loss)
