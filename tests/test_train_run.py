"""Single-process training runs of the tiny model: what each stage changes, resume, export and import."""

from __future__ import annotations

import pytest
import torch
from train_helpers import reset_accelerate, tiny_config, tiny_data

from deepgen_core.errors import DeepGenInputError
from deepgen_core.presets import tiny_components
from deepgen_core.train.export import export_reference_checkpoint, import_checkpoint
from deepgen_core.train.metrics import read_metrics
from deepgen_core.train.modeling import DeepGenTrainModel
from deepgen_core.train.stages import setup_stage
from deepgen_core.train.trainer import Trainer


def _zero_gradient(model) -> set[str]:
    """Tensors whose gradient is exactly zero by construction: the last DiT block is `context_pre_only`, so its
    context queries' attention outputs are dropped and their projection bias and q-norm never receive gradient
    (their 2-D weights still move, by weight decay)."""
    last = f"transformer.transformer_blocks.{len(model.transformer.transformer_blocks) - 1}.attn."
    return {last + "add_q_proj.bias", last + "norm_added_q.weight"}


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _train(stage: str, tmp_path, **extra):
    reset_accelerate()
    config = tiny_config(stage, tiny_data(tmp_path / "data"), tmp_path / "run", **{"max_steps": 4, "checkpoint.save_every": 2, **extra})
    trainer = Trainer(config)
    model = trainer.build_model()
    before = _snapshot(model)
    trainer.prebuilt = model
    result = trainer.run()
    return model, before, result


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory):
    return _train("sft", tmp_path_factory.mktemp("sft"))


def _changed(model, before) -> tuple[set[str], set[str]]:
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    return changed, trainable


def test_stage1_changes_only_the_bridge(tmp_path):
    model, before, result = _train("pretrain", tmp_path)
    changed, trainable = _changed(model, before)
    assert trainable == {n for n in before if n.startswith(("encoder.think_tokens", "encoder.bridge."))}
    assert changed == trainable
    assert len(result.losses) == 4 and all(torch.isfinite(torch.tensor(result.losses)))


def test_stage2_also_changes_the_dit_and_the_lora(sft_run):
    model, before, _ = sft_run
    changed, trainable = _changed(model, before)
    lora = {n for n in trainable if "lora_" in n}
    assert lora and all(n.startswith("encoder.vlm.language_model.") for n in lora)
    assert {n for n in before if n.startswith("transformer.")} <= trainable
    assert changed == trainable - _zero_gradient(model)
    assert not any(n.startswith("vae.") for n in trainable)


def test_resume_repeats_the_losses(sft_run, tmp_path):
    _, _, first = sft_run
    run_dir = first.output_dir
    records = read_metrics(run_dir / "metrics.jsonl")
    for d in (run_dir / "checkpoints").glob("step-00000004"):
        import shutil

        shutil.rmtree(d)
    reset_accelerate()
    config = tiny_config("sft", tiny_data(tmp_path / "data"), run_dir, **{"max_steps": 4, "checkpoint.save_every": 2})
    resumed = Trainer(config).run()
    assert resumed.losses == [records[3]["loss"], records[4]["loss"]]  # bitwise


def test_export_reproduces_the_trained_model(sft_run, tmp_path):
    from deepgen_core.pipeline import DeepGenPipeline

    model, _, result = sft_run
    model.eval()

    def generate(pipe):
        return pipe(["a green circle", "make it darker"], height=64, width=64, num_inference_steps=3, guidance_scale=3.0,
                    generator=torch.Generator().manual_seed(7), output_type="latent").latents

    with torch.no_grad():
        expected = generate(model.pipeline())  # LoRA still as peft layers
    reloaded = DeepGenPipeline.from_pretrained(result.export_dir, torch_dtype=torch.float32)  # LoRA merged
    got = generate(reloaded)
    assert (got - expected).abs().max() <= 1e-4 * (1 + expected.abs().max())


def test_reference_layout_export_imports_back(sft_run, tmp_path):
    model, _, _ = sft_run
    path = export_reference_checkpoint(model, tmp_path / "deepgen_checkpoint.safetensors", dtype=torch.float32)
    fresh = DeepGenTrainModel(tiny_components(seed=0))
    setup_stage(fresh, model_config := tiny_config("sft", tiny_data(tmp_path / "data"), tmp_path / "x"))
    assert model_config.lora.enabled
    import_checkpoint(fresh, path, lora_alpha=model_config.lora.alpha)
    trained = dict(model.named_parameters())
    for name, param in fresh.named_parameters():
        if param.requires_grad:
            assert torch.equal(param.detach(), trained[name].detach()), name


def test_import_merges_lora_modules_the_attached_lora_does_not_train(sft_run, tmp_path):
    from safetensors.torch import load_file, save_file

    model, _, _ = sft_run
    path = export_reference_checkpoint(model, tmp_path / "ref.safetensors", dtype=torch.float32)
    state = load_file(str(path))
    qkv = dict(model.encoder.vlm.named_modules())["visual.blocks.0.attn.qkv"]
    a, b = torch.randn(4, qkv.in_features), torch.randn(qkv.out_features, 4)  # a reference vision-tower adapter
    state["lmm.model.visual.blocks.0.attn.qkv.lora_A.default.weight"] = a
    state["lmm.model.visual.blocks.0.attn.qkv.lora_B.default.weight"] = b
    save_file(state, str(tmp_path / "with_vision.safetensors"))
    fresh = DeepGenTrainModel(tiny_components(seed=0))
    setup_stage(fresh, tiny_config("sft", tiny_data(tmp_path / "data"), tmp_path / "x"))
    base = dict(fresh.encoder.vlm.named_modules())["visual.blocks.0.attn.qkv"].weight.detach().clone()
    import_checkpoint(fresh, tmp_path / "with_vision.safetensors", lora_alpha=8.0)
    merged = dict(fresh.encoder.vlm.named_modules())["visual.blocks.0.attn.qkv"].weight
    torch.testing.assert_close(merged, base + (8.0 / 4) * b @ a)  # W + (alpha / r) B A


def test_gradient_checkpointing_gives_the_same_gradients(tmp_path):
    from train_helpers import fixed_batch

    from deepgen_core.train.modeling import (
        draw_step_noise,
        enable_gradient_checkpointing,
    )

    config = tiny_config("sft", tiny_data(tmp_path / "data"), tmp_path / "x")
    batch = fixed_batch(config)
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = DeepGenTrainModel(tiny_components(seed=0))
        setup_stage(model, config)
        model.train()
        for module in model.modules():  # dropout off: both passes must see the same function
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        if checkpointing:
            enable_gradient_checkpointing(model)
        model(batch, draw_step_noise(model, batch, torch.Generator().manual_seed(0)))["loss"].backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-4, atol=1e-6, msg=name)


def test_samples_and_tensorboard(tmp_path):
    _, _, result = _train("pretrain", tmp_path, **{"logging.sample_every": 2, "logging.tensorboard": "true", "max_steps": 2,
                                                   "checkpoint.export_at_end": "false"})
    assert sorted(p.name for p in (result.output_dir / "samples").iterdir()) == ["step-00000002-0.png"]
    assert list((result.output_dir / "tensorboard").rglob("events.out.tfevents.*"))
    assert result.export_dir is None


def test_stage1_from_scratch_dit_trains_bridge_and_dit(tmp_path):
    """DeepGen-Tiny's stage 1 (`train_transformer: true`): the DiT joins the bridge; the VLM stays frozen."""
    config = tiny_config("pretrain", tiny_data(tmp_path / "data"), tmp_path / "x", train_transformer=True)
    model = DeepGenTrainModel(tiny_components(seed=0))
    counts = setup_stage(model, config)
    assert set(counts) == {"bridge", "transformer"}
    assert counts["transformer"] == sum(p.numel() for p in model.transformer.parameters())
    assert not any(p.requires_grad for p in model.encoder.vlm.parameters())
    # A VLM without pretraining (train_vlm_text): its text model trains in full, the vision tower stays frozen.
    config = tiny_config("pretrain", tiny_data(tmp_path / "data"), tmp_path / "x", train_transformer=True, train_vlm_text=True)
    model = DeepGenTrainModel(tiny_components(seed=0))
    counts = setup_stage(model, config)
    assert counts["encoder"] == sum(p.numel() for p in model.encoder.vlm.language_model.parameters())
    assert not any(p.requires_grad for p in model.encoder.vlm.visual.parameters())
    with pytest.raises(DeepGenInputError, match="train_vlm_text is for stage 1"):
        tiny_config("sft", tiny_data(tmp_path / "data"), tmp_path / "x", train_vlm_text=True)


def test_latent_cache_repeats_the_image_path_losses(tmp_path):
    """`data.cache_latents` (encodings made once) trains exactly as decoding and encoding every step: same losses
    and same weights after four SFT steps over text-to-image and edit batches (LoRA dropout included)."""
    runs = {}
    for cached in (False, True):
        runs[cached] = _train("sft", tmp_path / str(cached), **{"data.cache_latents": str(cached).lower(), "checkpoint.export_at_end": "false"})
    (plain, _, a), (fast, _, b) = runs[False], runs[True]
    assert len(a.losses) == 4 and a.losses != [a.losses[0]] * 4
    torch.testing.assert_close(torch.tensor(b.losses), torch.tensor(a.losses), rtol=1e-5, atol=1e-6)
    for (name, p), q in zip(plain.named_parameters(), fast.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-6, msg=name)
