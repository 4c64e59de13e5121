"""Single-process parts of the multi-GPU support: the collective timeout setting and the note a failed rank leaves."""

from __future__ import annotations

from pathlib import Path

import pytest

from deepgen_core.errors import DeepGenInputError
from deepgen_core.train.config import DistributedConfig
from deepgen_core.train.failures import explain_rank_failure


def test_timeout_must_be_positive():
    assert DistributedConfig().timeout_minutes == 30.0
    with pytest.raises(DeepGenInputError, match="distributed.timeout_minutes must be > 0, got 0"):
        DistributedConfig(timeout_minutes=0)


def test_a_failed_collective_names_the_step_and_the_checkpoint(tmp_path):
    latest = tmp_path / "checkpoints" / "step-00000004"
    with pytest.raises(RuntimeError, match="Connection closed by peer") as raised:
        with explain_rank_failure(1, 4, 5, lambda: latest):
            raise RuntimeError("Connection closed by peer")
    (note,) = raised.value.__notes__
    assert note.startswith("rank 1 of 4 stopped at step 6") and f"the newest complete checkpoint is {latest}" in note
    with pytest.raises(RuntimeError) as raised:
        with explain_rank_failure(0, 2, 0, lambda: None):
            raise RuntimeError("timed out")
    assert "no complete checkpoint exists yet" in raised.value.__notes__[0]


def test_one_process_and_other_errors_pass_unchanged():
    with pytest.raises(RuntimeError) as raised:
        with explain_rank_failure(0, 1, 3, lambda: Path("x")):
            raise RuntimeError("one process")
    assert not getattr(raised.value, "__notes__", None)
    with pytest.raises(KeyError):
        with explain_rank_failure(0, 2, 3, lambda: Path("x")):
            raise KeyError("not a collective")


def test_an_fsdp_launch_is_refused(monkeypatch, tmp_path):
    """accelerate turns on FSDP only for GPU worlds (never MULTI_CPU), so the launch is simulated: an Accelerator
    that reports FSDP is refused with the supported alternative."""
    from accelerate.utils import DistributedType

    from deepgen_core.train import accel

    class FSDPAccelerator:
        distributed_type = DistributedType.FSDP

        def __init__(self, **kwargs) -> None:
            pass

    monkeypatch.setattr(accel, "Accelerator", FSDPAccelerator)
    with pytest.raises(DeepGenInputError, match="FSDP.*distributed.deepspeed_config: train/accelerate/zero2.json"):
        accel.build_accelerator(DistributedConfig(cpu=True, mixed_precision="no"), 1, 1, 1.0, tmp_path)
