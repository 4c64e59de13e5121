"""Benchmark generation runners: `deepgen eval BENCH --data PATH --out DIR` writes a benchmark's images in the
layout its official scorer reads (see docs/eval.md).

One module per benchmark format (reader + writer: geneval, dpg, unigenbench, wise, corebench, imgedit, gedit, rise,
uniredit, cvtg) over one shared runner (`runner.run_eval`: sharding, resume, batching, manifest, progress).
Importing the package does no work; names load on first access.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "BENCHMARKS": "deepgen_core.eval.registry",
    "get_benchmark": "deepgen_core.eval.registry",
    "Benchmark": "deepgen_core.eval.base",
    "Sample": "deepgen_core.eval.base",
    "EvalSettings": "deepgen_core.eval.runner",
    "EvalResult": "deepgen_core.eval.runner",
    "run_eval": "deepgen_core.eval.runner",
    "score_folder": "deepgen_core.eval.scoring",
    "ocr_scores": "deepgen_core.eval.scoring",
    "clip_score": "deepgen_core.eval.scoring",
    "load_model": "deepgen_core.eval.cli",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'deepgen_core.eval' has no attribute {name!r}")
