
"""Stand-in for `comfy.model_patcher.ModelPatcher`: owns a module, its devices and callbacks; `clone` shares it."""

from __future__ import annotations


class CallbacksMP:
    ON_LOAD = "on_load_after"


class ModelPatcher:
    def __init__(self, model, load_device, offload_device, size=0, weight_inplace_update=False):
        self.model, self.load_device, self.offload_device, self.size = model, load_device, offload_device, size
        if getattr(model, "device", None) is None:
            model.device = offload_device
        self.model.model_lowvram = False
        self.callbacks: dict[str, list] = {}
        self.parent = None

    def add_callback(self, call_type: str, callback) -> None:
        self.callbacks.setdefault(call_type, []).append(callback)

    def clone(self) -> ModelPatcher:
        clone = self.__class__(self.model, self.load_device, self.offload_device, self.size)
        clone.callbacks = {k: list(v) for k, v in self.callbacks.items()}
        clone.parent = self
        return clone

    def is_clone(self, other) -> bool:
        return other.model is self.model
