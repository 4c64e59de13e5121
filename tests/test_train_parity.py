"""Acceptance 1: the training loss and bridge gradients equal the reference's on the recorded fixture batch."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_parity
from PIL import Image

from deepgen_core.checkpoint import reference_bridge_key
from deepgen_core.image_processing import pil_to_tensor
from deepgen_core.train.modeling import DeepGenTrainModel, StepNoise
from deepgen_core.train.stages import setup_alignment


@pytest.fixture(scope="module")
def train_model(fixture_dir):
    from deepgen_core.pipeline import DeepGenPipeline

    base = fixture_dir / "base"
    pipe = DeepGenPipeline.from_pretrained(fixture_dir / "deepgen_checkpoint.safetensors", vlm=base / "qwen2_5_vl",
                                           diffusion=base / "sd35_kontext", config=fixture_dir / "deepgen_config.json", torch_dtype=torch.float32)
    model = DeepGenTrainModel(pipe.components()).train()
    setup_alignment(model, None)  # the fixture trained the bridge only (its DiT was frozen)
    return model


@pytest.mark.parametrize("kind,key", [("text2image", "t2i"), ("image2image", "i2i")])
def test_loss_and_gradients_match_reference(train_model, golden, manifest, fixture_dir, kind, key):
    g = golden("train_losses")
    info = manifest["outputs/train_losses.safetensors"]
    inputs, extra = info["inputs"][kind], info["info"][kind]
    load = lambda p: pil_to_tensor(Image.open(fixture_dir / p).convert("RGB"))
    n = len(inputs["images"])
    batch = {"pixel_values": [load(p) for p in inputs["images"]], "texts": extra["texts_effective"]}
    source_eps = None
    if kind == "image2image":
        batch["pixel_values_src"] = [[load(s) for s in srcs] for srcs in inputs["srcs"]]
        source_eps = [[g[f"e_{key}_src{i}_vae_eps"][0]] for i in range(n)]
    noise = StepNoise(g[f"e_{key}_u"], [g[f"e_{key}_tgt{i}_noise"] for i in range(n)],
                      [g[f"e_{key}_tgt{i}_vae_eps"][0] for i in range(n)], source_eps)
    train_model.zero_grad(set_to_none=True)
    loss = train_model(batch, noise)["loss"]
    loss.backward()

    reference = g[f"e_{key}_loss"]
    assert abs(loss.item() - reference.item()) <= 1e-5 * abs(reference.item()), f"loss {loss.item()} vs reference {reference.item()}"
    params = dict(train_model.encoder.named_parameters())
    ours = torch.stack([params[reference_bridge_key(name)].grad.norm() for name in extra["grad_norm_param_names"]])
    assert_parity(ours, g[f"e_{key}_grad_norms_per_param"], "per-parameter grad norms")
    connector = torch.stack([p.grad.norm() for n, p in params.items() if n.startswith("bridge.connector.")]).norm()
    assert_parity(connector, g[f"e_{key}_grad_norm_connector_total"], "connector grad norm")
    assert_parity(params["think_tokens"].grad, g[f"e_{key}_grad_meta_queries"], "think-token gradient")
    assert all(p.grad is None for n, p in train_model.named_parameters() if not p.requires_grad)
