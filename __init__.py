"""DeepGen 1.0 for ComfyUI. ComfyUI imports this file and calls `comfy_entrypoint` (V3 API); there is deliberately
no `NODE_CLASS_MAPPINGS`, which would make ComfyUI ignore the entry point."""

from .nodes import comfy_entrypoint

__all__ = ["comfy_entrypoint"]
