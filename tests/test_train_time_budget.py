"""`max_minutes`: a run past its wall-clock budget ends like a finished one (checkpoint, export, metrics), and a
re-run resumes from there to `max_steps`, as if it had never stopped."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

import pytest
import torch
from train_helpers import reset_accelerate, tiny_config, tiny_data

import deepgen_core.train.trainer as trainer_module
from deepgen_core.errors import DeepGenInputError
from deepgen_core.train.checkpointing import STATE_FILE
from deepgen_core.train.metrics import MetricsLog, read_metrics
from deepgen_core.train.trainer import Trainer

# Stage 1 (bridge only) is the cheapest stage; no periodic checkpoints, so every checkpoint comes from the end of a
# run; metrics flushed only at the end, so a flush marks where the run ended.
SETTINGS = {"max_steps": 6, "checkpoint.save_every": 0, "checkpoint.keep_last": 0, "logging.log_every": 100}


def _run(data, out, **extra):
    """Train; returns the result and the trained model (kept through `prebuilt`: the trainer builds it the same way)."""
    reset_accelerate()
    trainer = Trainer(tiny_config("pretrain", data, out, **{**SETTINGS, **extra}))
    model = trainer.prebuilt = trainer.build_model()
    return trainer.run(), model


def _trainable(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _record_flushes(monkeypatch) -> list[int]:
    """The steps at which the metrics are averaged and sent to the trackers."""
    steps: list[int] = []
    original = MetricsLog.flush

    def flush(self, step):
        steps.append(step)
        return original(self, step)

    monkeypatch.setattr(MetricsLog, "flush", flush)
    return steps


def _no_deadline(self, deadline):
    raise AssertionError("the time budget was checked although the run has none")


def _clock_advancing_a_minute_per_step(monkeypatch) -> None:
    """The trainer's monotonic clock reads 0 at the start and gains 60 s with every optimizer step."""
    now = [0.0]
    step = Trainer._optimizer_step

    def timed_step(self, *args):
        values = step(self, *args)
        now[0] += 60.0
        return values

    monkeypatch.setattr(Trainer, "_optimizer_step", timed_step)
    monkeypatch.setattr(trainer_module, "time", SimpleNamespace(monotonic=lambda: now[0], perf_counter=time.perf_counter))


def test_max_minutes_validation(tmp_path):
    with pytest.raises(DeepGenInputError, match="max_minutes must be >= 0"):
        tiny_config("pretrain", tiny_data(tmp_path / "data"), tmp_path / "run", max_minutes=-1)
    assert tiny_config("pretrain", tiny_data(tmp_path / "data"), tmp_path / "run", max_minutes=0.5).max_minutes == 0.5


def test_out_of_time_checkpoints_exports_and_the_rerun_finishes_exactly(tmp_path, monkeypatch):
    data = tiny_data(tmp_path / "data")
    # The reference: 6 uninterrupted steps; without a budget the deadline is never consulted.
    monkeypatch.setattr(Trainer, "_out_of_time", _no_deadline)
    flushes = _record_flushes(monkeypatch)
    full, full_model = _run(data, tmp_path / "full", max_minutes=0)
    assert full.step == 6 and len(full.losses) == 6 and flushes == [6]
    monkeypatch.undo()

    # 2.5 minutes with a step a minute: past the deadline after step 3 (180 s >= 150 s).
    _clock_advancing_a_minute_per_step(monkeypatch)
    flushes = _record_flushes(monkeypatch)
    cut, _ = _run(data, tmp_path / "cut", max_minutes=2.5)
    monkeypatch.undo()
    out = cut.output_dir
    assert cut.step == 3 and len(cut.losses) == 3 and flushes == [3]
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-00000003"]
    assert (out / "checkpoints" / "step-00000003" / STATE_FILE).is_file()
    assert cut.export_dir == out / "export" and (out / "export" / "deepgen-encoder.safetensors").is_file()
    assert sorted(read_metrics(out / "metrics.jsonl")) == [1, 2, 3]
    assert cut.losses == full.losses[:3]

    # The re-run (a budget it does not reach, real clock) resumes at step 4 and ends where the reference did.
    resumed, resumed_model = _run(data, out, max_minutes=600)
    assert resumed.step == 6 and resumed.losses == full.losses[3:]  # bitwise
    lines = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert lines == [1, 2, 3, 4, 5, 6]  # appended: nothing repeated, nothing skipped
    expected = _trainable(full_model)
    got = _trainable(resumed_model)
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        assert torch.equal(got[name], value), name
