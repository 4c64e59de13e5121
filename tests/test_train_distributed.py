"""Two-process CPU training (gloo) under torchrun: plain DDP and DeepSpeed ZeRO-2, and SIGKILL + resume.

Each run launches `deepgen train` through tests/train_entry.py (which only skips DeepSpeed's shm JIT build and
adds the kill hooks).
"""

from __future__ import annotations

import os
import signal
import time

import pytest
import torch
from safetensors.torch import load_file
from train_helpers import (
    fixed_batch,
    fixed_batch_loss,
    launch,
    run,
    tiny_config,
    tiny_data,
    tiny_overrides,
)

from deepgen_core.pipeline import DeepGenPipeline
from deepgen_core.presets import tiny_components
from deepgen_core.train.metrics import read_metrics
from deepgen_core.train.modeling import DeepGenTrainModel

pytestmark = pytest.mark.slow
ZERO2 = "distributed.deepspeed_config=train/accelerate/zero2.json"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_data(tmp_path_factory.mktemp("data"))


def _loss_before_after(data, out) -> tuple[float, float]:
    batch = fixed_batch(tiny_config("pretrain", data, out))
    before = fixed_batch_loss(DeepGenTrainModel(tiny_components(seed=0)), batch)
    trained = DeepGenPipeline.from_pretrained(out / "export", torch_dtype=torch.float32)
    return before, fixed_batch_loss(DeepGenTrainModel(trained.components()), batch)


@pytest.fixture(scope="module")
def zero2_run(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("zero2")
    run("sft", tiny_overrides(data, out, max_steps=8, **{"checkpoint.save_every": 2}) + [ZERO2])
    return out


def test_ddp_stage1(data, tmp_path):
    out = tmp_path / "ddp"
    log = run("pretrain", tiny_overrides(data, out, max_steps=8, **{"checkpoint.save_every": 4}))
    assert "MULTI_CPU, 2 process(es), backend gloo" in log
    assert sorted(read_metrics(out / "metrics.jsonl")) == list(range(1, 9))
    before, after = _loss_before_after(data, out)
    assert after < before, f"fixed-batch loss did not decrease: {before} -> {after}"
    initial = tiny_components(seed=0)
    trained = DeepGenPipeline.from_pretrained(out / "export", torch_dtype=torch.float32)
    for name, module in (("transformer", "transformer"), ("vae", "vae")):
        ref = getattr(initial, module).state_dict()
        assert all(torch.equal(v, ref[k]) for k, v in getattr(trained, module).state_dict().items()), f"stage 1 changed the {name}"
    assert all(torch.equal(v, initial.encoder.vlm.state_dict()[k]) for k, v in trained.encoder.vlm.state_dict().items())
    assert not torch.equal(trained.encoder.bridge.proj_in.weight, initial.encoder.bridge.proj_in.weight)


def test_zero2_stage2(data, zero2_run):
    metrics = read_metrics(zero2_run / "metrics.jsonl")
    assert sorted(metrics) == list(range(1, 9)) and all("grad_norm" in r for r in metrics.values())
    assert (zero2_run / "checkpoints" / "step-00000008" / "deepspeed").is_dir()
    before, after = _loss_before_after(data, zero2_run)
    assert after < before, f"fixed-batch loss did not decrease: {before} -> {after}"
    exported = load_file(str(zero2_run / "export-reference" / "deepgen_checkpoint.safetensors"))
    initial = tiny_components(seed=0).transformer.state_dict()
    dit = {k[len("transformer."):]: v for k, v in exported.items() if k.startswith("transformer.")}
    assert dit.keys() == initial.keys() and not torch.equal(dit["proj_out.weight"], initial["proj_out.weight"])
    lora_b = [v for k, v in exported.items() if ".lora_B." in k]
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b)  # B starts at 0: every text-layer LoRA trained


def test_sigkill_during_a_checkpoint_then_resume_is_bitwise(data, zero2_run, tmp_path):
    out = tmp_path / "killed"
    overrides = tiny_overrides(data, out, max_steps=8, **{"checkpoint.save_every": 2}) + [ZERO2]
    proc = launch("sft", overrides, env={"DEEPGEN_TEST_HANG_AT_SAVE": "4"})
    marker = out / "checkpoints" / "saving-4"
    deadline = time.monotonic() + 240
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists(), f"the run never reached the step-4 save:\n{proc.communicate()[0][-4000:] if proc.poll() is not None else ''}"
    os.killpg(proc.pid, signal.SIGKILL)  # the whole launcher group, mid-save
    proc.wait(timeout=60)
    ckpts = out / "checkpoints"
    assert (ckpts / ".tmp-step-00000004").is_dir() and not (ckpts / "step-00000004").exists()
    assert sorted(p.name for p in ckpts.glob("step-*")) == ["step-00000002"]

    run("sft", overrides)  # resume: checkpoint.resume=auto picks step 2 and removes the half-written one
    assert not (ckpts / ".tmp-step-00000004").exists()
    resumed, reference = read_metrics(out / "metrics.jsonl"), read_metrics(zero2_run / "metrics.jsonl")
    for step in range(3, 9):
        assert resumed[step]["loss"] == reference[step]["loss"], f"step {step}: {resumed[step]['loss']} vs {reference[step]['loss']}"


def test_zero2_compiled_with_checkpointing_repeats_the_eager_losses(data, zero2_run, tmp_path):
    """`model.compile: regional` (AOT-eager backend: dynamo's graphs without kernel generation) under ZeRO-2 with
    gradient checkpointing: the same 8 losses as the eager ZeRO-2 run, within float rounding."""
    out = tmp_path / "compiled"
    extra = {"checkpoint.save_every": 0, "checkpoint.export_at_end": "false", "model.compile": "regional",
             "model.compile_backend": "aot_eager", "model.gradient_checkpointing": "true"}
    log = run("sft", tiny_overrides(data, out, max_steps=8, **extra) + [ZERO2], timeout=600)
    assert "torch.compile (regional, aot_eager)" in log
    compiled, reference = read_metrics(out / "metrics.jsonl"), read_metrics(zero2_run / "metrics.jsonl")
    assert sorted(compiled) == list(range(1, 9))
    torch.testing.assert_close(torch.tensor([compiled[s]["loss"] for s in range(1, 9)]),
                               torch.tensor([reference[s]["loss"] for s in range(1, 9)]), rtol=1e-5, atol=1e-6)
