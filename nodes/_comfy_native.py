"""The ComfyUI model-stack imports of the native DeepGen nodes (MODEL and CLIP), beside `_comfy.py`'s node API.

Kept apart so that the one-box nodes do not depend on ComfyUI internals they never use.
"""

import comfy.conds as comfy_conds
import comfy.model_base as model_base
import comfy.supported_models_base as supported_models_base

__all__ = ["comfy_conds", "model_base", "supported_models_base"]
