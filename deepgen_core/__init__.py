"""DeepGen 1.0 core library: model, checkpoint I/O, pipeline and training stages (never imports ComfyUI).

Importing the package does no work; the heavy modules load on first attribute access.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "DeepGenPipeline": "deepgen_core.pipeline",
    "DeepGenPipelineOutput": "deepgen_core.pipeline",
    "DeepGenConfig": "deepgen_core.config",
    "ConnectorConfig": "deepgen_core.config",
    "DeepGenInputError": "deepgen_core.errors",
    "CheckpointError": "deepgen_core.errors",
}

__all__ = [*_LAZY, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'deepgen_core' has no attribute {name!r}")
