"""ComfyUI adapters over `deepgen_core` (V3 node API). Importing registers the `models/deepgen` folder and
loads no weights."""

from __future__ import annotations

from ._comfy import ComfyExtension, io
from .acceleration import DeepGenTorchCompile
from .conditioning import DeepGenReferenceLatent, DeepGenThinkTokens, DeepGenVLMEncode
from .loading import DeepGenLoader, register_folder
from .native_nodes import NATIVE_NODES
from .rewards import DeepGenOCRReward
from .rl import DeepGenRolloutPreview
from .sampling import DeepGenSampler

NODES: list[type[io.ComfyNode]] = [
    DeepGenLoader, DeepGenVLMEncode, DeepGenThinkTokens, DeepGenReferenceLatent, DeepGenSampler, DeepGenOCRReward, DeepGenRolloutPreview,
    DeepGenTorchCompile,
    *NATIVE_NODES,
]

register_folder()


class DeepGenExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)


async def comfy_entrypoint() -> DeepGenExtension:
    return DeepGenExtension()
