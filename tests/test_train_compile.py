"""`model.compile: regional` in stages 1-2: compiled training equals eager training, with and without gradient
checkpointing and with the VLM LoRA; refused combinations say why.

The compiled runs use the AOT-eager backend: the same dynamo capture, graph breaks and AOTAutograd forward /
backward split as inductor, without generating kernels (inductor on two CPU cores would take minutes). A
recording wrapper around it keeps the input names of every graph it receives, so the tests also see that the
intended regions were compiled, not silently left eager.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch._dynamo import lookup_backend, register_backend
from train_helpers import reset_accelerate, tiny_config, tiny_data

from deepgen_core.errors import DeepGenInputError
from deepgen_core.train.config import build_config
from deepgen_core.train.trainer import Trainer

BACKEND = "deepgen_test_recording"
GRAPH_MODULES: list[str] = []  # per compiled graph: the names of its inputs (lifted parameters included)


def _recording_backend(graph: torch.fx.GraphModule, example_inputs):
    GRAPH_MODULES.append(" ".join(n.name for n in graph.graph.nodes if n.op == "placeholder"))
    return lookup_backend("aot_eager")(graph, example_inputs)


if BACKEND not in torch._dynamo.list_backends(exclude_tags=()):
    register_backend(_recording_backend, name=BACKEND)


def _train(tmp_path, **extra):
    reset_accelerate()
    config = tiny_config("sft", tiny_data(tmp_path / "data"), tmp_path / "run",
                         **{"max_steps": 3, "checkpoint.export_at_end": "false", "checkpoint.save_every": 0, **extra})
    trainer = Trainer(config)
    trainer.prebuilt = model = trainer.build_model()
    return model, trainer.run()


def _assert_same_training(ours, reference) -> None:
    (model, result), (ref_model, ref_result) = ours, reference
    torch.testing.assert_close(torch.tensor(result.losses), torch.tensor(ref_result.losses), rtol=1e-5, atol=1e-6)
    for (name, p), q in zip(ref_model.named_parameters(), model.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-6, msg=name)


@pytest.fixture(scope="module")
def eager_run(tmp_path_factory):
    return _train(tmp_path_factory.mktemp("eager"))


# Placeholder names of the lifted parameters that identify each compiled region.
REGIONS = {
    "DiT block": "norm1_context_modules_linear",
    "VLM attention with LoRA": "q_proj_modules_lora_a",
    "VLM MLP with LoRA": "gate_proj_modules_lora_a",
    "VLM RMS norm": "variance_epsilon",
    "connector layer": "layer_norm1",
}


def test_compiled_training_with_checkpointing_equals_eager(eager_run, tmp_path):
    """Three SFT steps (text-to-image and edit micro-batches; DiT + bridge + VLM LoRA with dropout) compiled and with
    gradient checkpointing: the losses and weights of eager training, and every intended region ran as a compiled
    graph (a whole compiled VLM layer would silently stay eager here: its checkpointed forward holds transformers'
    output-capture graph break)."""
    GRAPH_MODULES.clear()
    torch._dynamo.reset()  # compile afresh, so the record shows this run's graphs
    compiled = _train(tmp_path, **{"model.compile": "regional", "model.compile_backend": BACKEND, "model.gradient_checkpointing": "true",
                                   "logging.sample_every": 3})
    _assert_same_training(compiled, eager_run)
    # Sampling after the compiled steps renders eagerly: six DiT block graphs already exist (mask / no mask x three
    # block kinds); three more inference graphs would pass dynamo's recompile limit, a hard error with fullgraph.
    assert (compiled[1].output_dir / "samples" / "step-00000003-0.png").is_file()
    missing = [name for name, key in REGIONS.items() if not any(key in graph for graph in GRAPH_MODULES)]
    assert not missing, f"not compiled: {missing}"


def test_compiled_training_without_checkpointing_equals_eager(eager_run, tmp_path):
    """The same without gradient checkpointing (after the test above, dynamo reuses most of its graphs); the export
    of a compiled model loads strictly (compiling renamed no parameter)."""
    from deepgen_core.pipeline import DeepGenPipeline

    model, result = compiled = _train(tmp_path, **{"model.compile": "regional", "model.compile_backend": BACKEND,
                                                   "checkpoint.export_at_end": "true"})
    assert model.transformer.transformer_blocks[0]._compiled_call_impl is not None
    assert model.encoder.vlm.language_model.layers[0].self_attn._compiled_call_impl is not None
    _assert_same_training(compiled, eager_run)
    exported = DeepGenPipeline.from_pretrained(result.export_dir, torch_dtype=torch.float32)
    torch.testing.assert_close(exported.transformer.proj_out.weight, model.transformer.proj_out.weight.detach())


def test_compile_option_validates(tmp_path):
    assert build_config("sft", {"model": {"compile": "regional"}}).model.compile == "regional"
    assert build_config("sft", {}).model.compile is False
    for bad in ("full", True, "yes please"):
        with pytest.raises(DeepGenInputError, match="model.compile must be false or 'regional'"):
            build_config("sft", {"model": {"compile": bad}})
    zero3 = tmp_path / "zero3.json"
    zero3.write_text(json.dumps({"zero_optimization": {"stage": 3}}))
    with pytest.raises(DeepGenInputError, match="ZeRO-3"):
        build_config("sft", {"model": {"compile": "regional"}, "distributed": {"deepspeed_config": str(zero3)}})
    build_config("sft", {"model": {"compile": False}, "distributed": {"deepspeed_config": str(zero3)}})  # eager ZeRO-3: not refused here
    zero2 = build_config("sft", {"model": {"compile": "regional"}, "distributed": {"deepspeed_config": "train/accelerate/zero2.json"}})
    assert zero2.model.compile == "regional"


def test_rl_refuses_compile():
    from deepgen_core.train.rl.config import RLConfig

    with pytest.raises(DeepGenInputError, match="RL trainer does not compile"):
        RLConfig(model={"compile": "regional"}, policy={"sft_coef": 0.0}, rewards={"prompts": ["a cat"], "weights": {"ocr": 1.0}})
