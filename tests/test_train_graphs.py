"""`train.graphs`: the training step's DiT call and encoder core through per-signature graphed callables.

CUDA graphs need a GPU (the H100 parity and speed are `benchmarks/training.py --parity` / `graphed_*` variants). On
the CPU a stand-in for `make_graphed_callables` records what would be captured and returns the region itself, so
these tests check the routing: which calls become regions, with which inputs, that the regions compute exactly the
plain step's loss and gradients, and which calls stay plain.
"""

from __future__ import annotations

import pytest
import torch
from train_helpers import fixed_batch, reset_accelerate, tiny_config, tiny_data

from deepgen_core.train.graphs import disable_training_graphs, enable_training_graphs
from deepgen_core.train.modeling import draw_step_noise
from deepgen_core.train.trainer import Trainer


class _Recorder:
    """Stands in for `torch.cuda.make_graphed_callables`: records each capture and runs the region eagerly."""

    def __init__(self) -> None:
        self.captures: list[tuple[str, list[tuple[int, ...]], list[bool]]] = []

    def __call__(self, module, sample_args, num_warmup_iters, allow_unused_input):
        assert allow_unused_input and num_warmup_iters == 3
        self.captures.append((type(module).__name__, [tuple(t.shape) for t in sample_args], [t.requires_grad for t in sample_args]))
        return module


@pytest.fixture(scope="module")
def sft(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("graphs")
    reset_accelerate()
    config = tiny_config("sft", tiny_data(tmp / "data"), tmp / "run")
    model = Trainer(config).build_model().train()
    for module in model.modules():  # LoRA dropout off: the two runs must draw nothing different
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    batch = fixed_batch(config)
    # One prompt and one image size: unpadded prompts and a uniform latent batch, the regions' case.
    batch = {"texts": [batch["texts"][0]] * 2, "pixel_values": [batch["pixel_values"][0]] * 2}
    return model, batch


def _step(model, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    loss = model(batch, draw_step_noise(model, batch, torch.Generator().manual_seed(0)))["loss"]
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return loss.detach(), grads


def test_regions_reproduce_the_plain_step(sft):
    model, batch = sft
    plain_loss, plain = _step(model, batch)
    recorder = _Recorder()
    graphs = enable_training_graphs(model, device_type="cpu", graph_fn=recorder)
    try:
        loss, grads = _step(model, batch)
        _step(model, batch)  # same signatures: no new capture
    finally:
        disable_training_graphs(model)
    assert [c[0] for c in recorder.captures] == ["_EncoderRegion", "_DiTRegion"] and graphs.captures == 2
    (_, enc_shapes, enc_grad), (_, dit_shapes, dit_grad) = recorder.captures
    think = model.encoder.config.num_think_tokens
    assert enc_shapes[0][0] == 2 and enc_shapes[0][1] > think and enc_shapes[1][:2] == (3, 2)  # embeds, M-RoPE ids
    assert enc_grad == [True, False]  # the think tokens (and the embedding LoRA) train through the embeddings
    assert dit_shapes[0][0] == 2 and dit_shapes[1][1] == enc_shapes[0][1] and dit_grad[:2] == [False, True]
    torch.testing.assert_close(loss, plain_loss, rtol=0, atol=0)
    assert grads.keys() == plain.keys()
    for name, grad in plain.items():
        torch.testing.assert_close(grads[name], grad, rtol=0, atol=0, msg=name)


def test_plain_calls_stay_plain(sft):
    model, batch = sft
    recorder = _Recorder()
    graphs = enable_training_graphs(model, device_type="cpu", graph_fn=recorder)
    try:
        padded = {**batch, "texts": [batch["texts"][0], batch["texts"][0] + " and more words"]}
        _step(model, padded)  # padded prompts: the encoder runs plain, the DiT region still applies
        assert [c[0] for c in recorder.captures] == ["_DiTRegion"]
        with torch.no_grad():  # sampling / evaluation during training
            model(batch, draw_step_noise(model, batch, torch.Generator().manual_seed(0)))
        model.eval()
        _step(model, batch)
        assert graphs.captures == 1
    finally:
        model.train()
        disable_training_graphs(model)
    assert "graphs" not in model.__dict__ and "core_call" not in model.encoder.__dict__


def test_shapes_past_the_cap_run_plain(sft, caplog):
    model, batch = sft
    recorder = _Recorder()
    graphs = enable_training_graphs(model, max_shapes=1, device_type="cpu", graph_fn=recorder)
    try:
        _step(model, batch)
        longer = {**batch, "texts": [batch["texts"][0] + " again"] * 2}  # a new prompt length: new signatures
        loss, grads = _step(model, longer)
        assert graphs.captures == 2 and "1 input shapes captured" in caplog.text
    finally:
        disable_training_graphs(model)
    plain_loss, plain = _step(model, longer)
    torch.testing.assert_close(loss, plain_loss, rtol=0, atol=0)
    assert grads.keys() == plain.keys() and all(torch.equal(grads[n], plain[n]) for n in plain)


def test_cuda_graphs_need_autocast_without_cache(sft):
    model, batch = sft
    recorder = _Recorder()
    enable_training_graphs(model, device_type="cpu", graph_fn=recorder)
    try:
        with torch.autocast("cpu", torch.bfloat16):  # the cast cache on: make_graphed_callables would refuse
            _step(model, batch)
        assert recorder.captures == []
        with torch.autocast("cpu", torch.bfloat16, cache_enabled=False):
            _step(model, batch)
        assert len(recorder.captures) == 2
    finally:
        disable_training_graphs(model)


def test_capturable_compile_leaves_the_graph_breaks_eager(sft):
    from deepgen_core.acceleration import compile_encoder_for_training

    model, _ = sft
    layers = model.encoder.vlm.language_model.layers
    try:
        counts = compile_encoder_for_training(model.encoder, capturable=True, backend="eager")
        assert counts == {"vlm_layer_parts": 3 * len(layers), "connector_layers": 0}
        assert all(layer.self_attn._compiled_call_impl is None and layer.mlp._compiled_call_impl is not None for layer in layers)
        assert all(layer._compiled_call_impl is None for layer in model.encoder.bridge.connector.layers)
    finally:
        for module in model.encoder.modules():
            module._compiled_call_impl = None


def test_cuda_graphs_option_refuses_what_it_cannot_capture(tmp_path):
    from deepgen_core.errors import DeepGenInputError
    from deepgen_core.train.config import build_config
    from deepgen_core.train.rl.config import RLConfig

    with pytest.raises(DeepGenInputError, match="model.cuda_graphs cannot be combined with model.gradient_checkpointing"):
        build_config("sft", {"model": {"cuda_graphs": True, "gradient_checkpointing": True}})
    with pytest.raises(DeepGenInputError, match="model.cuda_graphs cannot be combined with DeepSpeed"):
        build_config("sft", {"model": {"cuda_graphs": True}, "distributed": {"deepspeed_config": "train/accelerate/zero2.json"}})
    with pytest.raises(DeepGenInputError, match="model.cuda_graphs applies to stages 1 and 2"):
        RLConfig(model={"cuda_graphs": True}, policy={"sft_coef": 0.0}, rewards={"prompts": ["a cat"], "weights": {"ocr": 1.0}})
    if torch.cuda.is_available():
        return
    reset_accelerate()
    config = tiny_config("sft", tiny_data(tmp_path / "data"), tmp_path / "run", **{"model.cuda_graphs": "true"})
    with pytest.raises(DeepGenInputError, match=r"model.cuda_graphs needs one process on one CUDA GPU; this run has 1 process\(es\) on cpu"):
        Trainer(config).build_model()


def _train_losses(tmp_path, **extra) -> tuple[list[float], torch.nn.Module]:
    reset_accelerate()
    config = tiny_config("sft", tiny_data(tmp_path / "data"), tmp_path / "run",
                         **{"max_steps": 3, "grad_accum": 2, "checkpoint.export_at_end": "false", "checkpoint.save_every": 0,
                            "distributed.cpu": "false", "distributed.mixed_precision": "bf16", "lora.dropout": 0.0, **extra})
    trainer = Trainer(config)
    trainer.prebuilt = None
    result = trainer.run()
    return result.losses, trainer


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU (run on the device)")
def test_trainer_with_cuda_graphs_matches_plain_training(tmp_path):
    """Three optimizer steps of 2 accumulated micro-batches (bf16 autocast): the graphed run follows the plain one
    (bf16 rounding apart: the captured GEMMs may pick other cuBLAS kernels), so gradient accumulation is intact."""
    plain, _ = _train_losses(tmp_path / "plain")
    graphed, trainer = _train_losses(tmp_path / "graphed", **{"model.cuda_graphs": "true"})
    assert trainer.graphs.captures >= 1  # the text-to-image micro-batches' DiT calls (edits and padded prompts run plain)
    torch.testing.assert_close(torch.tensor(graphed), torch.tensor(plain), rtol=2e-2, atol=1e-3)
