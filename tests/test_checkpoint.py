"""Checkpoint layouts, wrappers, dtypes and the VLM LoRA merge (checked against peft as the oracle)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from deepgen_core.checkpoint import convert_reference_state_dict, read_state_dict
from deepgen_core.errors import CheckpointError
from deepgen_core.pipeline import DeepGenPipeline


def _load(fixture_dir, ckpt, **kw):
    base = fixture_dir / "base"
    kw.setdefault("config", fixture_dir / "deepgen_config.json")  # the connector's head count is not in the weights
    return DeepGenPipeline.from_pretrained(ckpt, vlm=base / "qwen2_5_vl", diffusion=base / "sd35_kontext", torch_dtype=torch.float32, **kw)


def _encode(pipe):
    ids, mask = pipe._tokenize(["<|im_start|>user\nGenerate an image: a cat<|im_end|>\n<|im_start|>assistant\n"])
    with torch.no_grad():
        return pipe.encoder(ids, mask)[0]


@pytest.mark.parametrize("layout,targets", [
    ("4.56", ["language_model.layers.3.self_attn.q_proj", "language_model.layers.20.mlp.down_proj"]),
    ("4.51", ["language_model.embed_tokens"]),
])
def test_vlm_lora_merge_matches_peft(tmp_path, fixture_dir, layout, targets):
    from peft import LoraConfig, get_peft_model

    sd = load_file(str(fixture_dir / "deepgen_checkpoint.safetensors"))
    plain = _load(fixture_dir, fixture_dir / "deepgen_checkpoint.safetensors")
    peft_vlm = get_peft_model(plain.encoder.vlm, LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights="gaussian"))
    gen = torch.Generator().manual_seed(0)
    prefix = {"4.56": "lmm.model.language_model.", "4.51": "lmm.model."}[layout]
    for name, module in peft_vlm.named_modules():
        for kind in ("lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B"):
            if not hasattr(module, kind) or "default" not in getattr(module, kind):
                continue
            param = getattr(module, kind)["default"]
            weight = param.weight if hasattr(param, "weight") else param
            with torch.no_grad():
                weight.copy_(torch.randn(weight.shape, generator=gen) * 0.05)
            mod_name = name.split("language_model.", 1)[1]
            suffix = ".default.weight" if kind in ("lora_A", "lora_B") else ".default"
            sd[f"{prefix}{mod_name}.{kind}{suffix}"] = weight.detach().clone()
    assert len(convert_reference_state_dict(sd).vlm_lora) == len(targets)
    expected = _encode(plain)  # peft-wrapped VLM (unmerged LoRA, scale alpha/r = 2)
    save_file(sd, str(tmp_path / "sft.safetensors"))
    merged = _load(fixture_dir, tmp_path / "sft.safetensors", lora_alpha=8.0)
    torch.testing.assert_close(_encode(merged), expected, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(_encode(_load(fixture_dir, fixture_dir / "deepgen_checkpoint.safetensors")), expected, atol=1e-3)


def test_incomplete_lora_is_an_error():
    with pytest.raises(CheckpointError, match="incomplete"):
        convert_reference_state_dict({"lmm.model.language_model.layers.0.mlp.up_proj.lora_A.default.weight": torch.zeros(4, 8)})


def test_key_layouts_and_wrappers(tmp_path, fixture_dir):
    sd = load_file(str(fixture_dir / "deepgen_checkpoint.safetensors"))
    torch.save({"module": sd}, tmp_path / "wrapped.pt")
    torch.save({f"module.{k}": v for k, v in sd.items()}, tmp_path / "prefixed.pth")
    for path in (tmp_path / "wrapped.pt", tmp_path / "prefixed.pth"):
        parts = convert_reference_state_dict(read_state_dict(path))
        assert set(parts.encoder) >= {"think_tokens", "bridge.proj_in.weight"} and len(parts.transformer) > 10
    names = convert_reference_state_dict({
        "lmm.model.language_model.layers.0.self_attn.q_proj.base_layer.weight": torch.zeros(1),
        "lmm.model.visual.blocks.0.attn.qkv.weight": torch.zeros(1),
        "lmm.visual.merger.mlp.0.weight": torch.zeros(1),
        "lmm.model.norm.weight": torch.zeros(1),
        "lmm.lm_head.weight": torch.zeros(1),
    }).vlm
    assert sorted(names) == ["language_model.layers.0.self_attn.q_proj.weight", "language_model.norm.weight",
                             "visual.blocks.0.attn.qkv.weight", "visual.merger.mlp.0.weight"]


def test_fp16_model_pt_loads_and_casts(tmp_path, fixture_dir):
    sd = {k: v.half() for k, v in load_file(str(fixture_dir / "deepgen_checkpoint.safetensors")).items()}
    torch.save(sd, tmp_path / "model.pt")
    pipe = _load(fixture_dir, tmp_path / "model.pt")
    assert pipe.encoder.think_tokens.dtype == torch.float32
    torch.testing.assert_close(pipe.encoder.think_tokens, sd["meta_queries"].float())


def test_pretrain_checkpoint_overlays_base_dit(tmp_path, fixture_dir):
    """Stage-1 files hold only the DiT's pos-embed buffer: the base DiT weights must be used for the rest."""
    from diffusers import SD3Transformer2DModel

    sd = {k: v for k, v in load_file(str(fixture_dir / "deepgen_checkpoint.safetensors")).items()
          if not k.startswith("transformer.") or k == "transformer.pos_embed.pos_embed"}
    save_file(sd, str(tmp_path / "pretrain.safetensors"))
    pipe = _load(fixture_dir, tmp_path / "pretrain.safetensors")
    base = SD3Transformer2DModel.from_pretrained(fixture_dir / "base" / "sd35_kontext" / "transformer")
    torch.testing.assert_close(pipe.transformer.proj_out.weight, base.proj_out.weight)


def test_converted_files_are_self_describing(tmp_path, tiny_pipe):
    from deepgen_core.checkpoint import safetensors_metadata
    from deepgen_core.loading import load_converted_encoder

    files = tiny_pipe.save_converted(tmp_path / "out", torch.float32)
    meta = safetensors_metadata(files["deepgen-encoder.safetensors"])
    assert meta["component"] == "encoder" and "tokenizer.json" in meta["tokenizer"]
    assert not list((tmp_path / "out").glob(".*tmp*")), "atomic save left a temporary file"
    tokenizer, encoder = load_converted_encoder(files["deepgen-encoder.safetensors"], torch.float32)
    assert tokenizer("a red circle")["input_ids"] == tiny_pipe.tokenizer("a red circle")["input_ids"]
    for (name, a), (_, b) in zip(sorted(encoder.state_dict().items()), sorted(tiny_pipe.encoder.state_dict().items())):
        assert torch.equal(a, b), name


def test_edit_negative_prompt_config_and_its_round_trips(tmp_path):
    """`edit_negative_prompt`: None means the reference's long negative; it survives to_dict / from_dict (files
    written before the field existed still load), a declared config file, and the converted format."""
    import dataclasses

    from deepgen_core.checkpoint import infer_config
    from deepgen_core.config import DEFAULT_EDIT_NEGATIVE_PROMPT, DeepGenConfig
    from deepgen_core.loading import load_converted_encoder
    from deepgen_core.pipeline import DeepGenPipeline
    from deepgen_core.presets import deepgen_tiny_config, tiny_components

    assert DeepGenConfig().default_edit_negative == DEFAULT_EDIT_NEGATIVE_PROMPT
    tiny = deepgen_tiny_config()
    assert tiny.edit_negative_prompt == "" and tiny.default_edit_negative == ""
    assert DeepGenConfig.from_dict(tiny.to_dict()) == tiny
    old = {k: v for k, v in tiny.to_dict().items() if k != "edit_negative_prompt"}
    assert DeepGenConfig.from_dict(old).default_edit_negative == DEFAULT_EDIT_NEGATIVE_PROMPT
    # A declared config (deepgen_config.json, `config=`) keeps the fields the weights do not determine.
    components = tiny_components(seed=0)
    declared = dataclasses.replace(components.encoder.config, edit_negative_prompt="", default_image_size=128)
    assert infer_config(components.encoder.state_dict(), declared.vlm_num_hidden_layers, declared) == declared
    components.encoder.config = declared
    files = DeepGenPipeline.from_components(components).save_converted(tmp_path / "out", torch.float32)
    _, encoder = load_converted_encoder(files["deepgen-encoder.safetensors"], torch.float32)
    assert encoder.config.edit_negative_prompt == "" and encoder.config == declared
