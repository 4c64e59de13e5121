"""Every numeric generation input (Python API, CLI, ComfyUI sampler node) with 0, negative, NaN, infinite and huge
values: each either works as documented (docs/inputs.md) or fails before any model work with an error that names the
input and the nearest valid value."""

from __future__ import annotations

import logging
import math

import pytest
import torch

from deepgen_core.errors import DeepGenInputError
from deepgen_core.pipeline import DeepGenPipeline

BAD_VALUES = [0, -1, math.nan, math.inf, 1e30]
# (input, value) pairs that are valid; everything else in the battery must be refused.
VALID = {("guidance_scale", 0), ("cfg", 0), ("seed", 0), ("seed", -1), ("eta", 0)}


@pytest.fixture()
def no_model_work(monkeypatch):
    """Make every model step fail loudly: a refusal must come before any of them runs."""
    def boom(*args, **kwargs):
        raise AssertionError("model work started before the inputs were validated")

    for step in ("encode_prompt", "encode_reference_latents", "denoise", "decode_latents", "from_pretrained"):
        monkeypatch.setattr(DeepGenPipeline, step, boom)


def _api_call(pipe, **kw):
    args = dict(prompt="a red circle", num_inference_steps=1, height=64, width=64, output_type="latent",
                generator=torch.Generator().manual_seed(0))
    return pipe(**(args | kw))


API_INPUTS = ["num_inference_steps", "guidance_scale", "shift", "num_images_per_prompt", "height", "width", "reference_size"]


@pytest.mark.parametrize("value", BAD_VALUES, ids=str)
@pytest.mark.parametrize("name", API_INPUTS)
def test_api_numeric_inputs(tiny_pipe, monkeypatch, no_model_work, name, value):
    if (name, value) in VALID:
        monkeypatch.undo()  # valid: the call runs and gives finite latents
        assert torch.isfinite(_api_call(tiny_pipe, **{name: value}).latents).all()
        return
    with pytest.raises(DeepGenInputError, match=rf"^{name}") as err:
        _api_call(tiny_pipe, **{name: value})
    message = str(err.value)
    assert repr(value) in message or str(value) in message
    assert "nearest valid value" in message or "for example" in message or "use at most" in message


@pytest.mark.parametrize("value", [2.5, "4", True, None], ids=repr)
def test_api_rejects_wrong_kinds(tiny_pipe, no_model_work, value):
    with pytest.raises(DeepGenInputError, match="num_inference_steps must be an integer"):
        _api_call(tiny_pipe, num_inference_steps=value)


def test_api_generator_and_initial_latents(tiny_pipe, no_model_work):
    with pytest.raises(DeepGenInputError, match="generator must be a torch.Generator.*manual_seed"):
        _api_call(tiny_pipe, generator=42)
    with pytest.raises(DeepGenInputError, match="latents .* contain NaN"):
        _api_call(tiny_pipe, latents=torch.full((1, 16, 8, 8), math.nan))


def test_think_token_count_is_checked_before_the_vlm(tiny_pipe, no_model_work, monkeypatch):
    monkeypatch.undo()
    monkeypatch.setattr(type(tiny_pipe.encoder), "forward", lambda *a, **k: (_ for _ in ()).throw(AssertionError("VLM ran")))
    for bad in (-1, 10_000, math.nan, 2.5):
        with pytest.raises(DeepGenInputError, match="num_think_tokens must be an integer"):
            tiny_pipe.encode_prompt(["a"], [""], num_think_tokens=bad)


def test_denoise_checks_its_numbers_too(tiny_pipe):
    """Hosts that call `denoise` directly (ComfyUI sampler, RL rollouts) get the same checks."""
    latents = torch.zeros(1, 16, 8, 8)
    with pytest.raises(DeepGenInputError, match="shift must be a number >= 0.1"):
        tiny_pipe.denoise(latents, None, None, 2, 4.0, shift=0.0)
    with pytest.raises(DeepGenInputError, match="eta must be"):
        tiny_pipe.denoise(latents, None, None, 2, 4.0, sampler="cps_sde", eta=math.inf)


# ------------------------------------------------------------------------------------------------ CLI

CLI_FLAGS = {"--steps": "num_inference_steps", "--cfg": "cfg", "--shift": "shift", "--num-images": "num_images",
             "--height": "height", "--width": "width", "--seed": "seed"}


def _cli(args, tmp_path):
    from deepgen_core.cli import main

    try:
        return main(["generate", "--prompt", "a red circle", "--out", str(tmp_path / "out.png"), *args])
    except SystemExit as exc:  # argparse's own refusal of a non-integer for an int flag
        return exc.code


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "1e30", "18446744073709551616"])
@pytest.mark.parametrize("flag", list(CLI_FLAGS))
def test_cli_numeric_flags(flag, value, tmp_path, monkeypatch, capsys, no_model_work):
    name = CLI_FLAGS[flag]
    if (name, float(value) if value not in ("nan", "inf") else value) in {(n, float(v)) for n, v in VALID}:
        monkeypatch.undo()
        extra = [] if flag == "--steps" else ["--steps", "1"]
        assert _cli([flag, value, *extra], tmp_path) == 0
        assert (tmp_path / "out.png").is_file()
        return
    assert _cli([flag, value], tmp_path) == 2
    err = capsys.readouterr().err
    assert flag in err, err
    assert not (tmp_path / "out.png").exists()


def test_cli_random_seed_is_logged(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    assert _cli(["--seed", "-1", "--steps", "1"], tmp_path) == 0
    assert "random seed" in caplog.text


# ------------------------------------------------------------------------------------------------ ComfyUI sampler node

from test_nodes import _encode, comfy, loaded, model_files, pack  # noqa: E402,F401  (the node tests' fixtures)

NODE_INPUTS = {"seed": 0, "steps": 2, "cfg": 4.0, "shift": 3.0, "eta": 1.0}


@pytest.mark.parametrize("value", [0, -1, math.nan, math.inf, 1e30, 2**64], ids=str)
@pytest.mark.parametrize("name", list(NODE_INPUTS))
def test_sampler_node_numeric_inputs(pack, loaded, monkeypatch, name, value):
    model, _ = loaded
    positive, negative = _encode(pack, model)
    kwargs = dict(NODE_INPUTS, sampler="cps_sde") | {name: value}
    sampler = pack.nodes.sampling.DeepGenSampler
    latent = {"samples": torch.zeros(1, 16, 8, 8)}
    if (name, value) in VALID - {("seed", -1)}:  # the node's seed widget starts at 0 (ComfyUI's "random" is its own control)
        out = sampler.execute(model=model, positive=positive, negative=negative, latent_image=latent, **kwargs).args[0]
        assert torch.isfinite(out["samples"]).all()
        return
    monkeypatch.setattr(type(model), "pipeline", lambda *a, **k: (_ for _ in ()).throw(AssertionError("the DiT was loaded")))
    with pytest.raises(ValueError, match=rf"^{name} must be"):  # the pack's own DeepGenInputError, named by the widget
        sampler.execute(model=model, positive=positive, negative=negative, latent_image=latent, **kwargs)


def test_encode_node_refuses_long_prompts_and_control_tokens_before_the_vlm_loads(pack, loaded, monkeypatch):
    model, _ = loaded
    monkeypatch.setattr(type(model), "pipeline", lambda *a, **k: (_ for _ in ()).throw(AssertionError("the VLM was loaded")))
    with pytest.raises(ValueError, match="prompt has .* tokens; DeepGen reads at most 1024"):
        _encode(pack, model, prompt="a red circle " * 2000)
    with pytest.raises(ValueError, match="negative_prompt contains the model's control token"):
        _encode(pack, model, negative="<|image_pad|>")
