"""Fault injection for reliability tests and drills: ``RAY_LTX_FAULT=<kind>@<step>[:<rank>]``.

The driver reads the variable and hands it to the workers in the loop config (workers of an
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
from pathlib import Path

KINDS = ("raise", "kill", "checkpoint", "nan", "infgrad", "oom", "shard")


class InjectedFault(RuntimeError):
    """The exception a ``raise`` fault throws."""


def _parse(spec: str | None) -> tuple[str, int, int] | None:
    spec = (spec or "").strip()
    if not spec:
        return None
    kind, _, rest = spec.partition("@")
    step, _, rank = rest.partition(":")
    if kind not in KINDS or not step.isdigit():
        raise ValueError(f"RAY_LTX_FAULT={spec!r}: expected <kind>@<step>[:<rank>] with kind in {KINDS}")
    return kind, int(step), int(rank or 0)


def triggered(spec: str | None, kinds: tuple[str, ...], step: int, rank: int, default_dir: str) -> str | None:
    """The fault ``spec``'s kind, once, if it is one of ``kinds`` and due here; the marker is written first."""
    parsed = _parse(spec)
    if parsed is None or parsed[0] not in kinds or parsed[1:] != (step, rank):
        return None
    kind = parsed[0]
    marker = Path(os.environ.get("RAY_LTX_FAULT_DIR") or default_dir) / f".fault-{kind}-{step}-{rank}.fired"
    if marker.exists():
        return None
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text("fired\n")
    return kind


def check(spec: str | None) -> None:
    """Reject a malformed spec on the driver, before any worker starts."""
    _parse(spec)


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
