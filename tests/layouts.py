"""Stand-ins of the layouts DeepGen is published in, built from the reference fixtures (tiny random weights).

Each is written here by hand, independently of our writers, so the loaders are checked against the layouts as
the authors publish them: the DeepGen-1.0-diffusers folder and an mmengine training checkpoint (`iter_N.pth`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.json", "merges.txt")
EXECUTED_MARKER = "remote-code-was-executed"


class MessageHub:
    """Stands for mmengine's MessageHub: an arbitrary Python object next to the weights."""

    def __init__(self) -> None:
        self.log_scalars = {"train/loss": [0.5, 0.4]}
        self.runtime_info = {"iter": 400000}


class ConfigDict(dict):
    """Stands for mmengine's ConfigDict in `meta`."""


def mmengine_checkpoint(state_dict: dict[str, torch.Tensor], path: Path, **extra) -> Path:
    """An mmengine-style training checkpoint: weights under `state_dict`, custom objects beside them."""
    torch.save({
        "meta": {"cfg": ConfigDict(model="deepgen"), "seed": 42, "epoch": 0, "iter": 400000, **extra},
        "state_dict": state_dict,
        "message_hub": MessageHub(),
        "optimizer": {"state": {}, "param_groups": [{"lr": 1e-5, "params": [0, 1]}]},
        "param_schedulers": [{"last_step": 400000}],
    }, path)
    return path


def diffusers_standin(fixture_dir: Path, out: Path, vlm: Path | None = None, connector_config: bool = True) -> Path:
    """The authors' DeepGen-1.0-diffusers layout for the fixture model: the checkpoint's DiT tensors over the base
    DiT in `transformer/`, the VLM (`vlm`, default the fixture's base) in `vlm/`, the bridge tensors under the
    reference's names in `connector/model.safetensors`, the reference's template in `prompt_template.json`, and a
    `deepgen_pipeline.py` that leaves a marker file if anything ever runs it."""
    base, ckpt = fixture_dir / "base", load_file(str(fixture_dir / "deepgen_checkpoint.safetensors"))
    reference_config = json.loads((fixture_dir / "deepgen_config.json").read_text())
    (out / "transformer").mkdir(parents=True)
    shutil.copy(base / "sd35_kontext" / "transformer" / "config.json", out / "transformer")
    dit = load_file(str(base / "sd35_kontext" / "transformer" / "diffusion_pytorch_model.safetensors"))
    dit.update({k[len("transformer."):]: v for k, v in ckpt.items() if k.startswith("transformer.")})
    save_file(dit, str(out / "transformer" / "diffusion_pytorch_model.safetensors"))
    for sub in ("vae", "scheduler"):
        shutil.copytree(base / "sd35_kontext" / sub, out / sub)
    shutil.copytree(vlm or base / "qwen2_5_vl", out / "vlm")
    (out / "tokenizer").mkdir()
    for name in TOKENIZER_FILES:
        if (base / "qwen2_5_vl" / name).is_file():
            shutil.copy(base / "qwen2_5_vl" / name, out / "tokenizer")
    (out / "connector").mkdir()
    save_file({k: v for k, v in ckpt.items() if not k.startswith("transformer.")}, str(out / "connector" / "model.safetensors"))
    if connector_config:
        (out / "connector" / "config.json").write_text(json.dumps(reference_config["connector"]))
    (out / "prompt_template.json").write_text(json.dumps(reference_config["prompt_template"]))
    (out / "model_index.json").write_text(json.dumps({
        "_class_name": ["deepgen_pipeline", "DeepGenPipeline"], "_diffusers_version": "0.35.2",
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"], "transformer": ["diffusers", "SD3Transformer2DModel"],
        "vae": ["diffusers", "AutoencoderKL"], "tokenizer": ["transformers", "Qwen2TokenizerFast"],
    }))
    (out / "deepgen_pipeline.py").write_text(f"from pathlib import Path\nPath(__file__).with_name({EXECUTED_MARKER!r}).touch()\n")
    return out
