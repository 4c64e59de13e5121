"""The layouts DeepGen is published in: the authors' diffusers folder, mmengine `.pth` stage checkpoints, and
what `deepgen convert --layout diffusers` writes. Golden parity of each runs in test_parity.py (conftest `pipe`);
this file checks the rest: LoRA merging, strict key reports, no code from the files ever runs, clear errors."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import pytest
import torch
from layouts import EXECUTED_MARKER, diffusers_standin, mmengine_checkpoint
from safetensors.torch import load_file, save_file

from deepgen_core.checkpoint import infer_config, read_state_dict
from deepgen_core.cli import main
from deepgen_core.errors import CheckpointError
from deepgen_core.pipeline import DeepGenPipeline

LORA_TARGETS = ["language_model.layers.3.self_attn.q_proj", "language_model.layers.20.mlp.down_proj", "language_model.embed_tokens"]


def _release(fixture_dir, ckpt, **kw):
    base = fixture_dir / "base"
    return DeepGenPipeline.from_pretrained(ckpt, vlm=base / "qwen2_5_vl", diffusion=base / "sd35_kontext", torch_dtype=torch.float32, **kw)


def _encode(pipe, prompt="a cat"):
    with torch.no_grad():
        return pipe.encode_prompt([prompt], [""]).prompt_embeds


@pytest.fixture(scope="module")
def sft(fixture_dir, tmp_path_factory):
    """An SFT-style checkpoint: the fixture's weights plus a random VLM LoRA (r 4, alpha 8), as an mmengine `.pth`,
    and the same LoRA merged by peft (the oracle) into a saved VLM folder, as the authors' `vlm/` is."""
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2_5_VLModel

    tmp = tmp_path_factory.mktemp("sft")
    sd = load_file(str(fixture_dir / "deepgen_checkpoint.safetensors"))
    vlm = Qwen2_5_VLModel.from_pretrained(fixture_dir / "base" / "qwen2_5_vl", dtype=torch.float32)
    peft_vlm = get_peft_model(vlm, LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGETS, init_lora_weights="gaussian"))
    gen = torch.Generator().manual_seed(1)
    for name, module in peft_vlm.named_modules():
        for kind in ("lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B"):
            if hasattr(module, kind) and "default" in getattr(module, kind):
                param = getattr(module, kind)["default"]
                weight = param.weight if hasattr(param, "weight") else param
                with torch.no_grad():
                    weight.copy_(torch.randn(weight.shape, generator=gen) * 0.05)
                suffix = ".default.weight" if kind in ("lora_A", "lora_B") else ".default"
                sd[f"lmm.model.{name.split('language_model.', 1)[1]}.{kind}{suffix}"] = weight.detach().clone()
    merged = peft_vlm.merge_and_unload()
    merged.save_pretrained(tmp / "merged-vlm")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(fixture_dir / "base" / "qwen2_5_vl" / name, tmp / "merged-vlm")
    pth = mmengine_checkpoint(sd, tmp / "iter_400000.pth")
    shutil.copy(fixture_dir / "deepgen_config.json", tmp)
    return {"pth": pth, "merged_vlm": tmp / "merged-vlm", "dir": tmp}


def test_sft_pth_lora_is_merged_and_equals_the_diffusers_folder_with_merged_vlm(sft, fixture_dir, tmp_path):
    from_pth = _release(fixture_dir, sft["pth"], lora_alpha=8.0)
    plain = _release(fixture_dir, fixture_dir / "deepgen_checkpoint.safetensors")
    folder = diffusers_standin(fixture_dir, tmp_path / "DeepGen-1.0-diffusers", vlm=sft["merged_vlm"])
    from_folder = DeepGenPipeline.from_pretrained(folder, torch_dtype=torch.float32)
    expected = _encode(from_pth)
    torch.testing.assert_close(_encode(from_folder), expected, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(_encode(plain), expected, atol=1e-3), "the LoRA changed nothing: the test proves nothing"
    assert not (folder / EXECUTED_MARKER).exists(), "deepgen_pipeline.py (remote code) was executed"


def test_convert_to_diffusers_layout_merges_the_lora_and_reloads_equal(sft, fixture_dir, tmp_path):
    base = fixture_dir / "base"
    rc = main(["convert", "--model", str(sft["pth"]), "--vlm", str(base / "qwen2_5_vl"), "--diffusion", str(base / "sd35_kontext"),
               "--out", str(tmp_path / "out"), "--layout", "diffusers", "--dtype", "fp32"])
    assert rc == 0
    out = tmp_path / "out"
    assert not any(k.startswith(("lmm.", "transformer.")) or "lora" in k for k in load_file(str(out / "connector" / "model.safetensors")))
    assert json.loads((out / "model_index.json").read_text())["_class_name"] == ["deepgen_pipeline", "DeepGenPipeline"]
    # The written vlm/ is a plain transformers folder with the LoRA (default alpha 128) already in its weights.
    reloaded = DeepGenPipeline.from_pretrained(out, torch_dtype=torch.float32)
    torch.testing.assert_close(_encode(reloaded), _encode(_release(fixture_dir, sft["pth"])), rtol=1e-5, atol=1e-5)


def test_connector_keys_are_mapped_strictly(fixture_dir, tmp_path):
    folder = diffusers_standin(fixture_dir, tmp_path / "dl")
    path = folder / "connector" / "model.safetensors"
    original = load_file(str(path))
    save_file({**original, "connector.extra_head.weight": torch.zeros(2)}, str(path))
    with pytest.raises(CheckpointError, match=r"unexpected 1 keys \[bridge.connector \(1\)\]"):
        DeepGenPipeline.from_pretrained(folder, torch_dtype=torch.float32)
    save_file({k: v for k, v in original.items() if k != "projector_2.bias"}, str(path))
    with pytest.raises(CheckpointError, match=r"missing 1 keys \[bridge.proj_pooled \(1\)\]"):
        DeepGenPipeline.from_pretrained(folder, torch_dtype=torch.float32)
    save_file({**original, "vision_tower.weight": torch.zeros(2)}, str(path))
    with pytest.raises(CheckpointError, match="keys DeepGen does not know: vision_tower.weight"):
        DeepGenPipeline.from_pretrained(folder, torch_dtype=torch.float32)


def test_prompt_template_file_wins_and_the_difference_is_logged(fixture_dir, tmp_path, caplog):
    folder = diffusers_standin(fixture_dir, tmp_path / "dl")
    template = json.loads((folder / "prompt_template.json").read_text())
    template["GENERATION"] = "Draw: {input}"
    (folder / "prompt_template.json").write_text(json.dumps(template))
    with caplog.at_level(logging.WARNING):
        pipe = DeepGenPipeline.from_pretrained(folder, torch_dtype=torch.float32)
    assert "GENERATION is 'Draw: {input}', the reference's is 'Generate an image: {input}'" in caplog.text
    seen = []
    original = pipe._tokenize
    pipe._tokenize = lambda texts: seen.extend(texts) or original(texts)
    _encode(pipe, "a cat")
    assert seen[0] == "<|im_start|>user\nDraw: a cat<|im_end|>\n<|im_start|>assistant\n"
    template["GENERATION"] = "no placeholder"
    (folder / "prompt_template.json").write_text(json.dumps(template))
    with pytest.raises(CheckpointError, match="prompt_template.json.*`generation` must be a string holding `{input}`"):
        DeepGenPipeline.from_pretrained(folder, torch_dtype=torch.float32)


def test_incomplete_or_foreign_diffusers_folders(fixture_dir, tmp_path):
    folder = diffusers_standin(fixture_dir, tmp_path / "dl")
    shutil.rmtree(folder / "vlm")
    with pytest.raises(CheckpointError, match="lacks vlm/"):
        DeepGenPipeline.from_pretrained(folder, torch_dtype=torch.float32)
    # The first upload had no vlm/: a Qwen2.5-VL folder given explicitly takes its place.
    pipe = DeepGenPipeline.from_pretrained(folder, vlm=fixture_dir / "base" / "qwen2_5_vl", torch_dtype=torch.float32)
    assert pipe.encoder.config.connector.num_attention_heads == 4
    sd3 = tmp_path / "sd3"
    shutil.copytree(fixture_dir / "base" / "sd35_kontext", sd3)
    (sd3 / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusion3Pipeline"}))
    with pytest.raises(CheckpointError, match="diffusers folder of StableDiffusion3Pipeline, not a DeepGen model"):
        DeepGenPipeline.from_pretrained(sd3, torch_dtype=torch.float32)


class _Exploit:
    """Unpickling this runs `os.mkdir(marker)` in any loader that calls what a file names."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_malicious_pth_loads_its_weights_and_runs_nothing(fixture_dir, tmp_path):
    marker = tmp_path / "exploited"
    sd = load_file(str(fixture_dir / "deepgen_checkpoint.safetensors"))
    path = mmengine_checkpoint(sd, tmp_path / "iter_200000.pth", hook=_Exploit(marker))
    torch.save({"meta": {"x": _Exploit(marker)}, "state_dict": sd}, tmp_path / "plain.pth")
    with pytest.raises(Exception):  # the oracle: torch's weights_only loader refuses the file
        torch.load(path, weights_only=True)
    for file in (path, tmp_path / "plain.pth"):
        weights = read_state_dict(file)
        assert weights.keys() == sd.keys() and all(torch.equal(weights[k], sd[k]) for k in sd)
    assert not marker.exists(), "loading the checkpoint executed code from it"
    shutil.copy(fixture_dir / "deepgen_config.json", tmp_path)
    _release(fixture_dir, path)
    assert not marker.exists()


def test_pth_without_weights_is_a_clear_error(tmp_path):
    from layouts import MessageHub

    torch.save({"meta": {"iter": 3}, "message_hub": MessageHub()}, tmp_path / "iter_3.pth")
    with pytest.raises(CheckpointError, match=r"iter_3.pth holds no model weights \(top-level entries: \['message_hub', 'meta'\]"):
        read_state_dict(tmp_path / "iter_3.pth")
    torch.save({"module": {"meta_queries": torch.zeros(2, 2)}, "ds_version": "0.17.5", "optimizer": None}, tmp_path / "mp_rank_00_model_states.pt")
    with pytest.raises(CheckpointError, match="one file of a DeepSpeed checkpoint folder.*consolidate the folder first"):
        read_state_dict(tmp_path / "mp_rank_00_model_states.pt")
    (tmp_path / "ckpt.zip").write_bytes(b"PK\x03\x04")
    with pytest.raises(CheckpointError, match="unzip it first"):
        read_state_dict(tmp_path / "ckpt.zip")


def test_checkpoint_away_from_its_config_is_refused_not_guessed(fixture_dir, tmp_path):
    shutil.copy(fixture_dir / "deepgen_checkpoint.safetensors", tmp_path)
    with pytest.raises(CheckpointError, match="do not store connector.num_attention_heads and scb_layer_stride.*deepgen_config.json"):
        _release(fixture_dir, tmp_path / "deepgen_checkpoint.safetensors")
    # DeepGen 1.0's own shapes imply its released values (meta tensors: only shapes are read).
    meta = torch.device("meta")
    shapes = {"think_tokens": (128, 2048), "bridge.proj_in.weight": (2048, 12288), "bridge.proj_pooled.weight": (2048, 2048),
              "bridge.proj_context.weight": (4096, 2048), **{f"bridge.connector.layers.{i}.mlp.fc1.weight": (11946, 2048) for i in range(6)}}
    config = infer_config({k: torch.empty(s, device=meta) for k, s in shapes.items()}, 36, None)
    assert (config.connector.num_attention_heads, config.scb_layer_stride) == (32, 6)


def test_clear_errors_for_broken_folders_and_files(fixture_dir, tmp_path, tiny_pipe):
    vlm = tmp_path / "qwen"
    vlm.mkdir()
    shutil.copy(fixture_dir / "base" / "qwen2_5_vl" / "config.json", vlm)
    with pytest.raises(CheckpointError, match=f"VLM folder {vlm} holds no weights"):
        DeepGenPipeline.from_pretrained(fixture_dir / "deepgen_checkpoint.safetensors", vlm=vlm, diffusion=fixture_dir / "base" / "sd35_kontext")
    out = tmp_path / "converted"
    tiny_pipe.save_converted(out, torch.float32)
    (out / "deepgen.json").write_text("{ broken")
    with pytest.raises(CheckpointError, match="deepgen.json is broken .*run `deepgen convert` again"):
        DeepGenPipeline.from_pretrained(out, torch_dtype=torch.float32)
    (out / "deepgen.json").unlink()
    data = (out / "deepgen-transformer.safetensors").read_bytes()
    (out / "deepgen-transformer.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="deepgen-transformer.safetensors is not a readable safetensors file .*truncated"):
        DeepGenPipeline.from_pretrained(out, torch_dtype=torch.float32)


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_written_weights_honour_the_umask(tiny_pipe, tmp_path, umask):
    from deepgen_core.formats.diffusers_layout import save_diffusers_layout

    old = os.umask(umask)
    try:
        written = [*tiny_pipe.save_converted(tmp_path / "converted", torch.float32).values()]
        save_diffusers_layout(tiny_pipe.components(), tmp_path / "diffusers", torch.float32)
    finally:
        os.umask(old)
    written += [p for p in (tmp_path / "diffusers").rglob("*") if p.is_file()]
    assert len(written) > 10
    assert {oct(p.stat().st_mode & 0o777) for p in written} == {oct(0o666 & ~umask)}


def test_trained_export_converts_to_the_diffusers_layout_and_generates_the_same(tiny_pipe, tmp_path):
    """An export (`deepgen train` writes the converted layout) through `deepgen convert --layout diffusers`: the
    tiny VAE, the config fields the weights do not store and the prompt template survive; `generate` opens it."""
    tiny_pipe.save_converted(tmp_path / "export", torch.float32)
    assert main(["convert", "--model", str(tmp_path / "export"), "--out", str(tmp_path / "dl"), "--layout", "diffusers", "--dtype", "fp32"]) == 0
    pipe = DeepGenPipeline.from_pretrained(tmp_path / "dl", torch_dtype=torch.float32)
    assert pipe.encoder.config == tiny_pipe.encoder.config and type(pipe.vae) is type(tiny_pipe.vae)
    run = {"prompt": "a red circle", "num_inference_steps": 2, "height": 64, "width": 64, "output_type": "latent"}
    a = tiny_pipe(**run, generator=torch.Generator().manual_seed(0)).latents
    b = pipe(**run, generator=torch.Generator().manual_seed(0)).latents
    torch.testing.assert_close(a, b)
    assert main(["generate", "--model", str(tmp_path / "dl"), "--prompt", "a red circle", "--steps", "1", "--height", "64",
                 "--width", "64", "--device", "cpu", "--out", str(tmp_path / "out.png")]) == 0
    assert (tmp_path / "out.png").is_file()


def test_training_checkpoints_honour_the_umask(tmp_path):
    from accelerate import Accelerator
    from train_helpers import reset_accelerate

    from deepgen_core.train.checkpointing import CheckpointManager

    reset_accelerate()
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    old = os.umask(0o027)
    try:
        folder = CheckpointManager(tmp_path, Accelerator(cpu=True)).save(1, model, optimizer, scheduler, {}, extra={"ema": {"w": torch.zeros(2)}})
    finally:
        os.umask(old)
    tensors = sorted(folder.glob("*.safetensors"))
    assert len(tensors) >= 3 and {oct(p.stat().st_mode & 0o777) for p in tensors} == {oct(0o640)}
