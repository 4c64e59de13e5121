"""Every ComfyUI import of the pack, in one place (the V3 API is still marked unstable upstream).

Imported only when ComfyUI loads the pack; `deepgen_core` never imports this module.
"""

import comfy.sd as comfy_sd
import comfy.utils as comfy_utils
import folder_paths
import latent_preview
import node_helpers
from comfy import latent_formats, model_management, model_patcher, ops
from comfy_api.latest import ComfyExtension, io, ui

__all__ = [
    "ComfyExtension", "comfy_sd", "comfy_utils", "folder_paths", "io", "latent_formats", "latent_preview",
    "model_management", "model_patcher", "node_helpers", "ops", "ui",
]
