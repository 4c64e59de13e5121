"""Stand-in for the `comfy.utils` pieces the pack uses: ProgressBar (with the server's hook) and load_torch_file."""

from __future__ import annotations

import safetensors.torch
import torch

PROGRESS_BAR_HOOK = None


def set_progress_bar_global_hook(function) -> None:
    global PROGRESS_BAR_HOOK
    PROGRESS_BAR_HOOK = function


class ProgressBar:
    def __init__(self, total, node_id=None):
        self.total, self.current, self.hook, self.node_id = total, 0, PROGRESS_BAR_HOOK, node_id

    def update_absolute(self, value, total=None, preview=None):
        if total is not None:
            self.total = total
        self.current = min(value, self.total)
        if self.hook is not None:
            self.hook(self.current, self.total, preview, node_id=self.node_id)

    def update(self, value):
        self.update_absolute(self.current + value)


def load_torch_file(ckpt, safe_load=False, device=None, return_metadata=False):
    device = device or torch.device("cpu")
    if str(ckpt).endswith((".safetensors", ".sft")):
        with safetensors.safe_open(ckpt, framework="pt", device=str(device)) as f:
            state, metadata = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()  # noqa: SIM118 - safe_open is no dict
    else:
        state, metadata = torch.load(ckpt, map_location=device, weights_only=True), None
    return (state, metadata) if return_metadata else state
