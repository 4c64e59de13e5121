"""The authors' `DeepGen-1.0-diffusers` layout, read and written (docs/loading.md).

    model_index.json        _class_name ["deepgen_pipeline", "DeepGenPipeline"] + the diffusers components
    transformer/            SD3 DiT (diffusers `SD3Transformer2DModel`)
    vae/                    `AutoencoderKL`
    scheduler/              `FlowMatchEulerDiscreteScheduler`
    tokenizer/              Qwen2.5-VL tokenizer
    vlm/                    Qwen2.5-VL-3B-Instruct (transformers layout), the rank-64 / alpha-128 LoRA merged in
    connector/model.safetensors   think tokens + SCB connector + projectors, under the reference's names
    prompt_template.json    the reference's prompt template block
    deepgen_pipeline.py     the authors' remote code: never imported or run here

`connector/model.safetensors` holds exactly the bridge tensors of the reference `state_dict()` (reference notes
§7.2): `meta_queries`, `projector_{1,2,3}.{weight,bias}` and `connector.layers.{i}.*` (103 tensors for DeepGen
1.0), mapped onto our modules by `checkpoint.convert_reference_state_dict`. Our writer adds `deepgen_config.json`
(the fields the weights do not store); the authors' download has none and needs none (DeepGen 1.0's shapes imply
the released values).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import diffusers
import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler

from ..checkpoint import convert_reference_state_dict, infer_config, load_config_file, read_state_dict
from ..config import REFERENCE_TEMPLATE_KEYS, DeepGenConfig, PromptTemplate, template_from_reference
from ..errors import CheckpointError
from ..models.tiny_vae import DeepGenTinyVAE
from ..models.transformer import DeepGenSD3Transformer
from .files import honour_umask, load_pretrained_folder
from .vlm import load_vlm, vlm_config_dict, vlm_hub_state

logger = logging.getLogger(__name__)

MODEL_INDEX, CONNECTOR_FILE, TEMPLATE_FILE, CONFIG_FILE = "model_index.json", "connector/model.safetensors", "prompt_template.json", "deepgen_config.json"
PIPELINE_CLASS = ["deepgen_pipeline", "DeepGenPipeline"]
# The reference's prompt-template entries DeepGen's generation never reads, written for tools that expect them.
REFERENCE_TEMPLATE_EXTRAS = {
    "IMG_START_TOKEN_FOR_GENERATION": False, "SYSTEM": "<|im_start|>system\n{system}<|im_end|>\n", "SUFFIX": "<|im_end|>",
    "SUFFIX_AS_EOS": True, "SEP": "\n", "STOP_WORDS": ["<|im_end|>", "<|endoftext|>"], "CFG": "Generate an image.",
}


def is_diffusers_layout(path: str | Path) -> bool:
    """A DeepGen diffusers folder: `model_index.json` beside `connector/` and `transformer/`."""
    path = Path(path)
    return path.is_dir() and (path / MODEL_INDEX).is_file() and (path / "connector").is_dir() and (path / "transformer").is_dir()


def pipeline_class_name(path: str | Path) -> str | None:
    """`_class_name` of a diffusers folder's model_index.json (None when unreadable), for "not DeepGen" messages."""
    try:
        name = json.loads((Path(path) / MODEL_INDEX).read_text()).get("_class_name")
    except (OSError, json.JSONDecodeError, AttributeError):
        return None
    return name[-1] if isinstance(name, list) and name else name


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} could not be read ({exc}); download it again.") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object, found {type(data).__name__}; download it again.")
    return data


# --------------------------------------------------------------------------------------------- reading


def read_prompt_template(folder: Path) -> PromptTemplate:
    """The folder's `prompt_template.json` (the file wins over the reference's template; differences are logged)."""
    path = folder / TEMPLATE_FILE
    if not path.is_file():
        logger.info("%s has no %s: using the reference's prompt template", folder, TEMPLATE_FILE)
        return PromptTemplate()
    fields, unused = template_from_reference(_read_json(path))
    try:
        template = PromptTemplate(**fields)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: {exc} Fix the entry or delete the file to use the reference's template.") from None
    reference, inverse = PromptTemplate(), {v: k for k, v in REFERENCE_TEMPLATE_KEYS.items()}
    for name in fields:
        if getattr(template, name) != getattr(reference, name):
            logger.warning("%s: %s is %r, the reference's is %r; the file's value is used", path, inverse[name], getattr(template, name), getattr(reference, name))
    logger.debug("%s: entries not used for generation: %s", path, unused)
    return template


def connector_state(path: Path) -> dict[str, torch.Tensor]:
    """`connector/model.safetensors` in our encoder names; any tensor that is not a bridge tensor is an error."""
    parts = convert_reference_state_dict(read_state_dict(path))  # raises naming every key it does not know
    extra = {"DiT": parts.transformer, "VAE": parts.vae, "VLM": parts.vlm, "VLM LoRA": parts.vlm_lora}
    found = [f"{len(v)} {k}" for k, v in extra.items() if v]
    if found:
        raise CheckpointError(f"{path} holds {', '.join(found)} tensors besides the connector; it is not a DeepGen connector file.")
    return parts.encoder


def _declared_config(folder: Path, config: DeepGenConfig | str | Path | None) -> dict:
    """`config`, else our `deepgen_config.json`, else what the authors' layout fixes: their pipeline stacks every
    6th hidden state, and a `connector/config.json` (when present) gives the connector's sizes and head count."""
    if isinstance(config, DeepGenConfig):
        return config.to_dict()
    if config is not None:
        return load_config_file(config)
    if (folder / CONFIG_FILE).is_file():
        return load_config_file(folder / CONFIG_FILE)
    declared: dict = {"scb_layer_stride": 6}
    if (folder / "connector" / "config.json").is_file():
        connector = _read_json(folder / "connector" / "config.json")
        keys = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "layer_norm_eps", "hidden_act")
        declared["connector"] = {k: connector[k] for k in keys if k in connector}
    return declared


def _check_parts(folder: Path, vlm: Path | None) -> None:
    required = ["transformer/config.json", "vae/config.json", "scheduler/scheduler_config.json", CONNECTOR_FILE]
    missing = [name for name in required if not (folder / name).is_file()]
    if vlm is None and not (folder / "vlm").is_dir():
        missing.append("vlm/ (the first upload had none: download vlm/ or pass --vlm with the Qwen2.5-VL-3B-Instruct folder, whose images differ: its LoRA is not merged)")
    if missing:
        raise CheckpointError(f"the DeepGen diffusers folder {folder} lacks {'; '.join(missing)}: the download is incomplete, fetch the missing files.")


def load_diffusers_layout(
    folder: str | Path,
    dtype: torch.dtype,
    attn_implementation: str,
    config: DeepGenConfig | str | Path | None = None,
    vlm: str | Path | None = None,
):
    """Build `DeepGenComponents` from a DeepGen-1.0-diffusers folder (or one written by `save_diffusers_layout`).

    Args:
        vlm: another Qwen2.5-VL folder instead of `vlm/` (the first upload shipped none).
        config: a DeepGen config or its JSON; default: the folder's `deepgen_config.json`, else inferred.
    """
    from ..loading import DeepGenComponents, build_encoder, load_tokenizer

    folder = Path(folder)
    _check_parts(folder, vlm)
    weights = connector_state(folder / CONNECTOR_FILE)
    declared = _declared_config(folder, config)
    declared["prompt_template"] = read_prompt_template(folder).__dict__.copy()
    tokenizer = load_tokenizer(folder / "tokenizer" if (folder / "tokenizer").is_dir() else folder / "vlm")
    vlm_model = load_vlm(vlm or folder / "vlm", dtype, attn_implementation)
    cfg = infer_config(weights, vlm_model.config.text_config.num_hidden_layers, declared)
    pad_id = tokenizer.convert_tokens_to_ids(cfg.prompt_template.image_pad)
    if pad_id != vlm_model.config.image_token_id:
        raise CheckpointError(f"{folder / TEMPLATE_FILE}: IMG_CONTEXT_TOKEN {cfg.prompt_template.image_pad!r} is token {pad_id}, but the VLM's image token is {vlm_model.config.image_token_id}; fix the file.")
    encoder = build_encoder(vlm_model, cfg, weights, dtype, what=f"{folder / CONNECTOR_FILE}")
    transformer = _load_diffusers_model(DeepGenSD3Transformer, folder / "transformer", dtype)
    vae_class = DeepGenTinyVAE if _read_json(folder / "vae" / "config.json").get("_class_name") == "DeepGenTinyVAE" else AutoencoderKL
    vae = _load_diffusers_model(vae_class, folder / "vae", dtype)
    scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(folder / "scheduler", local_files_only=True)
    logger.info("loaded the DeepGen diffusers folder %s (%d connector tensors)", folder, len(weights))
    return DeepGenComponents(tokenizer, encoder.eval(), transformer.eval(), vae.eval(), scheduler)


def _load_diffusers_model(cls, folder: Path, dtype: torch.dtype):
    return load_pretrained_folder(lambda: cls.from_pretrained(folder, torch_dtype=dtype, local_files_only=True), str(folder))


# --------------------------------------------------------------------------------------------- writing


def encoder_to_connector(encoder: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Our encoder's think tokens and bridge under the reference names of `connector/model.safetensors`."""
    from ..checkpoint import _BRIDGE_RENAMES

    inverse = {ours: ref for ref, ours in _BRIDGE_RENAMES.items()}
    state = {"meta_queries": encoder.think_tokens}
    for name, tensor in encoder.bridge.state_dict().items():
        full = "bridge." + name
        prefix = next(p for p in inverse if full.startswith(p))
        state[inverse[prefix] + full[len(prefix):]] = tensor
    return state


def _model_config(model, class_name: str) -> dict:
    config = {k: v for k, v in dict(model.config).items() if not k.startswith("_")}
    return {"_class_name": class_name, "_diffusers_version": diffusers.__version__, **config}


def save_diffusers_layout(components, out_dir: str | Path, dtype: torch.dtype | None = torch.bfloat16) -> dict[str, Path]:
    """Write the authors' DeepGen-1.0-diffusers layout (LoRA already merged into the VLM) into `out_dir`.

    `deepgen_pipeline.py` (the authors' code) is not written: copy it from their download to use their pipeline.
    """
    from ..loading import atomic_save_safetensors

    out = Path(out_dir)
    encoder = components.encoder

    def save(state: dict[str, torch.Tensor], name: str, config: dict | None = None, config_name: str = "config.json") -> Path:
        path = out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if config is not None:
            (path.parent / config_name).write_text(json.dumps(config, indent=2, sort_keys=True))
        state = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).contiguous() for k, v in state.items()}
        return atomic_save_safetensors(state, path, {"format": "pt"})

    vae_class = type(components.vae).__name__
    written = {
        "transformer": save(components.transformer.state_dict(), "transformer/diffusion_pytorch_model.safetensors", _model_config(components.transformer, "SD3Transformer2DModel")),
        "vae": save(components.vae.state_dict(), "vae/diffusion_pytorch_model.safetensors", _model_config(components.vae, vae_class)),
        "vlm": save(vlm_hub_state(encoder.vlm), "vlm/model.safetensors", vlm_config_dict(encoder.vlm, dtype)),
        "connector": save(encoder_to_connector(encoder), CONNECTOR_FILE),
    }
    components.scheduler.save_config(out / "scheduler")
    components.tokenizer.save_pretrained(out / "tokenizer")
    inverse = {v: k for k, v in REFERENCE_TEMPLATE_KEYS.items()}
    template = {**REFERENCE_TEMPLATE_EXTRAS, **{inverse[k]: v for k, v in encoder.config.prompt_template.__dict__.items()}}
    (out / TEMPLATE_FILE).write_text(json.dumps(template, indent=2))
    (out / CONFIG_FILE).write_text(encoder.config.to_json())
    index = {"_class_name": PIPELINE_CLASS, "_diffusers_version": diffusers.__version__,
             "scheduler": ["diffusers", type(components.scheduler).__name__], "transformer": ["diffusers", "SD3Transformer2DModel"],
             "vae": ["diffusers", vae_class], "tokenizer": ["transformers", type(components.tokenizer).__name__]}
    (out / MODEL_INDEX).write_text(json.dumps(index, indent=2))
    honour_umask(out)
    return written
