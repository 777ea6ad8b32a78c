"""The fault plan that reliability tests and drills inject through (RAY_LTX_FAULT), without Ray."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from ray_ltx.faults import FaultPlan, InjectedFault, step_injector


@pytest.mark.parametrize("spec", ["explode@3", "raise@x", "raise@3:y", "raise"])
def test_a_malformed_fault_is_refused_with_the_expected_form(spec: str) -> None:
    with pytest.raises(ValueError, match="<kind>@<step>"):
        FaultPlan.parse(spec, "/tmp")


def test_no_fault_planned_means_nothing_to_call_in_the_step(tmp_path: Path) -> None:
    assert not FaultPlan.parse("", str(tmp_path))
    assert step_injector(FaultPlan(), 0) is None
    # a checkpoint fault and a fault for another rank leave this rank's steps alone too
    assert step_injector(FaultPlan.parse("checkpoint@2", str(tmp_path)), 0) is None
    assert step_injector(FaultPlan.parse("raise@2:1", str(tmp_path)), 0) is None


def test_a_fault_fires_once_at_its_step_and_rank_even_after_a_restart(tmp_path: Path) -> None:
    plan = FaultPlan.parse("raise@2:1", str(tmp_path))
    inject = step_injector(plan, 1)
    loss = torch.tensor(1.0)
    assert inject(1, loss) is loss
    with pytest.raises(InjectedFault, match="step 2"):
        inject(2, loss)
    assert list(tmp_path.glob(".fault-raise-2-1.fired"))
    # the restarted worker gets the same plan and goes on past the step
    assert step_injector(plan, 1)(2, loss) is loss


def test_nan_and_infinite_gradient_faults(tmp_path: Path) -> None:
    assert math.isnan(float(step_injector(FaultPlan.parse("nan@0", str(tmp_path)), 0)(0, torch.tensor(2.0))))
    weight = torch.tensor(3.0, requires_grad=True)
    loss = step_injector(FaultPlan.parse("infgrad@0", str(tmp_path)), 0)(0, weight * 2)
    assert math.isfinite(float(loss))
    loss.backward()
    assert math.isinf(float(weight.grad))


def test_the_marker_folder_can_be_moved_for_drills(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("RAY_LTX_FAULT", "shard@0")
    monkeypatch.setenv("RAY_LTX_FAULT_DIR", str(tmp_path / "markers"))
    plan = FaultPlan.from_env(str(tmp_path / "run"))
    assert plan.due(("shard",), 0, 0) == "shard" and plan.due(("shard",), 0, 0) is None
    assert (tmp_path / "markers" / ".fault-shard-0-0.fired").is_file()
