"""Configuration of the DeepGen-specific parts (think tokens, Stacked Channel Bridging).

The VLM (Qwen2.5-VL), the DiT (SD3.5-M MMDiT-X), the VAE and the scheduler keep their own library configs
(`transformers` / `diffusers`); this file only holds what DeepGen adds on top of them. Defaults are the
released DeepGen 1.0 values (reference notes §1).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

# Reference notes §2.1: the chat template without a system turn, and the text-to-image prefix.
INSTRUCTION_TEMPLATE = "<|im_start|>user\n{input}<|im_end|>\n<|im_start|>assistant\n"
GENERATION_TEMPLATE = "Generate an image: {input}"
IMAGE_START_TOKEN = "<|vision_start|>"
IMAGE_END_TOKEN = "<|vision_end|>"
IMAGE_PAD_TOKEN = "<|image_pad|>"

# Reference notes §4.1: the negative prompt every edit benchmark script uses.
DEFAULT_EDIT_NEGATIVE_PROMPT = (
    "blurry, low quality, low resolution, distorted, deformed, broken content, missing parts, damaged details, "
    "artifacts, glitch, noise, pixelated, grainy, compression artifacts, bad composition, wrong proportion, "
    "incomplete editing, unfinished, unedited areas."
)


@dataclass(frozen=True)
class PromptTemplate:
    """The text around every prompt (reference notes §2.1), the reference's `prompt_template` values by default.

    Args:
        instruction: wraps every prompt; holds `{input}` once (reference key `INSTRUCTION`).
        generation: wraps a text-to-image prompt inside `instruction` (reference key `GENERATION`).
        image_start, image_pad, image_end: one reference image is `image_start + image_pad * n + image_end`
            (reference keys `IMG_START_TOKEN`, `IMG_CONTEXT_TOKEN`, `IMG_END_TOKEN`).
    """

    instruction: str = INSTRUCTION_TEMPLATE
    generation: str = GENERATION_TEMPLATE
    image_start: str = IMAGE_START_TOKEN
    image_pad: str = IMAGE_PAD_TOKEN
    image_end: str = IMAGE_END_TOKEN

    def __post_init__(self) -> None:
        for name in ("instruction", "generation"):
            text = getattr(self, name)
            try:
                ok = isinstance(text, str) and text.count("{input}") == 1 and text.format(input="") is not None
            except (KeyError, IndexError, ValueError):
                ok = False
            if not ok:
                raise ValueError(f"prompt template `{name}` must be a string holding `{{input}}` exactly once and no other braces, got {text!r}.")
        for name in ("image_start", "image_pad", "image_end"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"prompt template `{name}` must be a non-empty token string, got {getattr(self, name)!r}.")


# The reference's key names in `prompt_template` blocks and files -> our field names.
REFERENCE_TEMPLATE_KEYS = {"INSTRUCTION": "instruction", "GENERATION": "generation", "IMG_START_TOKEN": "image_start",
                           "IMG_CONTEXT_TOKEN": "image_pad", "IMG_END_TOKEN": "image_end"}


def template_from_reference(block: dict[str, Any]) -> tuple[dict[str, str], list[str]]:
    """Our `PromptTemplate` fields from a reference-style block (`INSTRUCTION`, `GENERATION`, `IMG_*`; our own
    field names are accepted too). Returns the fields found and the keys DeepGen's generation never reads (the
    reference's `SYSTEM`, `SUFFIX`, `CFG`, ... are chat/training settings)."""
    ours = {f.name for f in dataclasses.fields(PromptTemplate)}
    fields, unused = {}, []
    for key, value in block.items():
        name = REFERENCE_TEMPLATE_KEYS.get(key, key if key in ours else None)
        if name is None:
            unused.append(key)
        else:
            fields[name] = value
    return fields, unused


@dataclass(frozen=True)
class ConnectorConfig:
    """The SigLIP-style pre-LN encoder between `projector_1` and the two output heads (reference notes §1.4)."""

    hidden_size: int = 2048
    intermediate_size: int = 11946
    num_hidden_layers: int = 6
    num_attention_heads: int = 32
    layer_norm_eps: float = 1e-6
    hidden_act: str = "gelu_pytorch_tanh"

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"connector.hidden_size ({self.hidden_size}) must be divisible by connector.num_attention_heads "
                f"({self.num_attention_heads})."
            )


@dataclass(frozen=True)
class DeepGenConfig:
    """DeepGen's own hyper-parameters.

    Args:
        num_think_tokens: learnable think tokens appended after the assistant header (reference: 128).
        vlm_hidden_size: width of the VLM text model (Qwen2.5-VL-3B: 2048).
        vlm_num_hidden_layers: decoder layers of the VLM text model (Qwen2.5-VL-3B: 36).
        scb_layer_stride: SCB takes `hidden_states[L-1], hidden_states[L-1-stride], ...` (reference: 6).
        scb_num_layers: how many hidden states are stacked along channels (reference: 6).
        connector: the bridge encoder.
        pooled_projection_dim: width of the pooled vector fed to the DiT (= DiT `pooled_projection_dim`).
        joint_attention_dim: width of the token sequence fed to the DiT (= DiT `joint_attention_dim`).
        max_text_length: training-time left truncation of the prompt (reference notes §2.2); inference never truncates.
        default_image_size: output side when neither the size nor a single reference image fixes it (reference:
            512; DeepGen-Tiny: 128, the size it was trained at).
        edit_negative_prompt: the negative prompt of an edit when the caller gives none; None means the reference's
            quality negative (`DEFAULT_EDIT_NEGATIVE_PROMPT`, notes §4.1). DeepGen-Tiny uses '': it is trained with
            edit-instruction dropout, so "the input image, no instruction" is its unconditional edit branch, while
            the long negative is text it never saw.
        prompt_template: the text around prompts; the reference's by default (a DeepGen-1.0-diffusers download's
            `prompt_template.json` replaces it, docs/loading.md).
    """

    num_think_tokens: int = 128
    vlm_hidden_size: int = 2048
    vlm_num_hidden_layers: int = 36
    scb_layer_stride: int = 6
    scb_num_layers: int = 6
    connector: ConnectorConfig = field(default_factory=ConnectorConfig)
    pooled_projection_dim: int = 2048
    joint_attention_dim: int = 4096
    max_text_length: int = 1024
    default_image_size: int = 512
    edit_negative_prompt: str | None = None
    prompt_template: PromptTemplate = field(default_factory=PromptTemplate)

    def __post_init__(self) -> None:
        if isinstance(self.connector, dict):
            object.__setattr__(self, "connector", ConnectorConfig(**self.connector))
        if isinstance(self.prompt_template, dict):
            object.__setattr__(self, "prompt_template", PromptTemplate(**self.prompt_template))
        if self.num_think_tokens < 0:
            raise ValueError(f"num_think_tokens must be >= 0, got {self.num_think_tokens}.")
        available = len(range(self.vlm_num_hidden_layers - 1, 0, -self.scb_layer_stride))
        if available < self.scb_num_layers:
            raise ValueError(
                f"SCB needs {self.scb_num_layers} hidden states with stride {self.scb_layer_stride}, but a VLM with "
                f"{self.vlm_num_hidden_layers} layers gives only {available}; lower scb_num_layers or the stride."
            )

    @property
    def scb_layer_indices(self) -> tuple[int, ...]:
        """Indices into `output_hidden_states` (index 0 = embeddings, i = output of decoder layer i-1), deepest first.

        The reference rule is `range(num_layers - 1, 0, -6)`: for 36 layers [35, 29, 23, 17, 11, 5]. The final,
        normed state (index `num_layers`) is never used (reference notes §1.3).
        """
        rule = range(self.vlm_num_hidden_layers - 1, 0, -self.scb_layer_stride)
        return tuple(rule)[: self.scb_num_layers]

    @property
    def default_edit_negative(self) -> str:
        """The negative prompt an edit uses when none is given (see `edit_negative_prompt`)."""
        return DEFAULT_EDIT_NEGATIVE_PROMPT if self.edit_negative_prompt is None else self.edit_negative_prompt

    @property
    def scb_input_dim(self) -> int:
        return self.vlm_hidden_size * self.scb_num_layers

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DeepGenConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"Unknown DeepGen config keys {unknown}; valid keys are {sorted(known)}.")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True)
