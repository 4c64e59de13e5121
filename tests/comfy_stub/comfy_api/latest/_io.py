# ruff: noqa: RUF013 - the signatures mirror ComfyUI's (implicit Optional defaults)
"""Stand-in for `comfy_api.latest._io`: schema objects with the real constructor signatures (the subset the pack
uses) and `as_dict` output shaped like `/object_info` entries."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any


def _prune(d: dict) -> dict:
    return {k: v for k, v in d.items() if v is not None}


class Input:
    def __init__(self, id: str, display_name: str = None, optional=False, tooltip: str = None, lazy: bool = None, extra_dict=None):
        self.id, self.display_name, self.optional, self.tooltip, self.lazy = id, display_name, optional, tooltip, lazy
        self.extra_dict = extra_dict or {}

    def as_dict(self) -> dict:
        return _prune({"display_name": self.display_name, "optional": self.optional, "tooltip": self.tooltip, "lazy": self.lazy}) | _prune(self.extra_dict)

    def get_io_type(self) -> str:
        return self.io_type


class WidgetInput(Input):
    def __init__(self, id: str, display_name: str = None, optional=False, tooltip: str = None, lazy: bool = None, default: Any = None,
                 socketless: bool = None, widget_type: str = None, force_input: bool = None, extra_dict=None):
        super().__init__(id, display_name, optional, tooltip, lazy, extra_dict)
        self.default, self.socketless, self.widget_type, self.force_input = default, socketless, widget_type, force_input

    def as_dict(self) -> dict:
        return super().as_dict() | _prune({"default": self.default, "forceInput": self.force_input})


class Output:
    def __init__(self, id: str = None, display_name: str = None, tooltip: str = None, is_output_list=False):
        self.id, self.display_name, self.tooltip, self.is_output_list = id, display_name, tooltip, is_output_list

    def get_io_type(self) -> str:
        return self.io_type


def _socket(io_type: str, input_base: type = Input):
    """A ComfyType with nested Input/Output classes carrying `io_type`."""
    class _Type:
        class Input(input_base):
            pass

        class Output(Output):
            pass

    _Type.io_type = _Type.Input.io_type = _Type.Output.io_type = io_type
    _Type.__name__ = io_type
    return _Type


def Custom(io_type: str):
    return _socket(io_type)


class _Int(WidgetInput):
    def __init__(self, id: str, display_name: str = None, optional=False, tooltip: str = None, lazy: bool = None, default: int = None,
                 min: int = None, max: int = None, step: int = None, control_after_generate: bool = None, display_mode=None,
                 socketless: bool = None, force_input: bool = None):
        super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input)
        self.min, self.max, self.step, self.control_after_generate = min, max, step, control_after_generate

    def as_dict(self) -> dict:
        return super().as_dict() | _prune({"min": self.min, "max": self.max, "step": self.step, "control_after_generate": self.control_after_generate})


class _Float(WidgetInput):
    def __init__(self, id: str, display_name: str = None, optional=False, tooltip: str = None, lazy: bool = None, default: float = None,
                 min: float = None, max: float = None, step: float = None, round: float = None, display_mode=None,
                 socketless: bool = None, force_input: bool = None):
        super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input)
        self.min, self.max, self.step, self.round = min, max, step, round

    def as_dict(self) -> dict:
        return super().as_dict() | _prune({"min": self.min, "max": self.max, "step": self.step, "round": self.round})


class _String(WidgetInput):
    def __init__(self, id: str, display_name: str = None, optional=False, tooltip: str = None, lazy: bool = None, multiline=False,
                 placeholder: str = None, default: str = None, dynamic_prompts: bool = None, socketless: bool = None, force_input: bool = None):
        super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input)
        self.multiline, self.placeholder, self.dynamic_prompts = multiline, placeholder, dynamic_prompts

    def as_dict(self) -> dict:
        return super().as_dict() | _prune({"multiline": self.multiline, "dynamicPrompts": self.dynamic_prompts})


class _Boolean(WidgetInput):
    def __init__(self, id: str, display_name: str = None, optional=False, tooltip: str = None, lazy: bool = None, default: bool = None,
                 label_on: str = None, label_off: str = None, socketless: bool = None, force_input: bool = None):
        super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input)


class _Combo(WidgetInput):
    def __init__(self, id: str, options: list[str] = None, display_name: str = None, optional=False, tooltip: str = None, lazy: bool = None,
                 default: str = None, control_after_generate: bool = None, upload=None, image_folder=None, remote=None,
                 socketless: bool = None):
        super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, None)
        self.options = options

    def as_dict(self) -> dict:
        return super().as_dict() | _prune({"options": self.options})


Int = _socket("INT", _Int)
Float = _socket("FLOAT", _Float)
String = _socket("STRING", _String)
Boolean = _socket("BOOLEAN", _Boolean)
Combo = _socket("COMBO", _Combo)
Image = _socket("IMAGE")
Latent = _socket("LATENT")
Conditioning = _socket("CONDITIONING")
Vae = _socket("VAE")
Model = _socket("MODEL")
Clip = _socket("CLIP")


class Hidden(str, Enum):
    unique_id = "UNIQUE_ID"
    prompt = "PROMPT"
    extra_pnginfo = "EXTRA_PNGINFO"


@dataclass
class Schema:
    node_id: str
    display_name: str = None
    category: str = "sd"
    inputs: list = field(default_factory=list)
    outputs: list = field(default_factory=list)
    hidden: list = field(default_factory=list)
    description: str = ""
    is_input_list: bool = False
    is_output_node: bool = False
    is_deprecated: bool = False
    is_experimental: bool = False
    is_api_node: bool = False
    not_idempotent: bool = False
    enable_expand: bool = False

    def validate(self) -> None:
        ids = [i.id for i in self.inputs] + [o.id for o in self.outputs]
        if len(ids) != len(set(ids)):
            raise ValueError(f"duplicate input/output ids in {self.node_id}: {ids}")


class ComfyNode:
    @classmethod
    def define_schema(cls) -> Schema:
        raise NotImplementedError

    @classmethod
    def execute(cls, **kwargs):
        raise NotImplementedError

    @classmethod
    def GET_SCHEMA(cls) -> Schema:
        schema = cls.define_schema()
        schema.validate()
        return schema


class NodeOutput:
    def __init__(self, *args: Any, ui=None, expand: dict = None, block_execution: str = None):
        self.args, self.ui, self.expand, self.block_execution = args, ui, expand, block_execution

    @property
    def result(self):
        return self.args if self.args else None

    def __getitem__(self, index: int) -> Any:
        return self.args[index]
