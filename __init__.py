"""DeepGen 1.0 for ComfyUI. ComfyUI imports this file and calls `comfy_entrypoint` (V3 API); there is deliberately
no `NODE_CLASS_MAPPINGS`, which would make ComfyUI ignore the entry point. The node modules are imported on that
call, so importing this package outside ComfyUI (pytest collects it as the repository root) needs no `comfy`."""

WEB_DIRECTORY = "./web"  # score-card widgets (web/js) and node help pages (web/docs/<NodeId>.md)


async def comfy_entrypoint():
    from .nodes import comfy_entrypoint as entrypoint

    return await entrypoint()
