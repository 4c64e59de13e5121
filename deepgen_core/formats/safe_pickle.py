"""Torch `.pt` / `.pth` checkpoints read without executing anything from the file.

`weights_only=True` first. mmengine training checkpoints (the SFT `iter_400000.pth`, the pre-train
`iter_200000.pth`) hold Python objects next to the weights (`meta`, `message_hub`, optimizer and scheduler
state), which `weights_only=True` refuses. For those, torch's own loader runs with a restricted unpickler: tensors
(memory-mapped from zip-format files) and plain containers are rebuilt, and every other global the file names
becomes an inert placeholder whose original is never imported or called (the "restricting globals" recipe of
Python's `pickle` documentation). The model weights are then taken from the `state_dict` (or `module` / `model`)
entry. Nothing here trusts the file.
"""

from __future__ import annotations

import logging
import pickle
import types
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError

logger = logging.getLogger(__name__)

WEIGHT_ENTRIES = ("state_dict", "module", "model", "model_state_dict")

# Globals a torch file needs to rebuild tensors and containers. Storage classes are resolved by torch's own
# unpickler wrapper before this list is consulted.
_ALLOWED = {
    ("torch._utils", "_rebuild_tensor"), ("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_tensor_v3"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch.serialization", "_get_layout"), ("torch", "Size"), ("torch", "device"),
    ("collections", "OrderedDict"), ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "bytearray"),
    ("builtins", "complex"), ("builtins", "slice"), ("_codecs", "encode"),
}


class InertGlobal:
    """Stands in for a global named by the file (`global_name`). Building it records the arguments; nothing of the
    original is imported or called."""

    global_name = "?"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state: Any) -> None:
        self.state = state

    # Subclasses of dict and list are filled item by item (SETITEMS / APPENDS opcodes).
    def __setitem__(self, key: Any, value: Any) -> None:
        self.__dict__.setdefault("items", {})[key] = value

    def append(self, value: Any) -> None:
        self.__dict__.setdefault("elements", []).append(value)

    def extend(self, values: Any) -> None:
        self.__dict__.setdefault("elements", []).extend(values)

    def __call__(self, *args: Any, **kwargs: Any) -> InertGlobal:
        return type(self)(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<inert {self.global_name}>"


_INERT: dict[str, type[InertGlobal]] = {}


def _inert(module: str, name: str) -> type[InertGlobal]:
    key = f"{module}.{name}"
    if key not in _INERT:
        _INERT[key] = type(f"Inert[{key}]", (InertGlobal,), {"global_name": key})
    return _INERT[key]


def _is_allowed_torch_attr(module: str, name: str) -> bool:
    """dtypes and layouts (`torch.float16`, `torch.strided`): plain values, never called by the unpickler."""
    value = getattr(torch, name, None) if module == "torch" else None
    return isinstance(value, (torch.dtype, torch.layout, torch.memory_format))


class RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED or _is_allowed_torch_attr(module, name):
            return getattr(__import__(module, fromlist=[name]), name)
        logger.debug("checkpoint names %s.%s: kept as an inert placeholder", module, name)
        return _inert(module, name)


# torch.load takes a pickle *module*; this one differs from `pickle` only in its Unpickler.
restricted_pickle = types.ModuleType("deepgen_restricted_pickle")
restricted_pickle.Unpickler = RestrictedUnpickler
restricted_pickle.UnpicklingError = pickle.UnpicklingError
restricted_pickle.load = lambda file, **kw: RestrictedUnpickler(file, **kw).load()
restricted_pickle.__name__ = "deepgen_restricted_pickle"


def _torch_load(path: Path, **kw: Any) -> Any:
    """torch.load memory-mapped (zip format), or plainly for old-style files, which cannot be mapped."""
    try:
        return torch.load(str(path), map_location="cpu", mmap=True, **kw)
    except RuntimeError as exc:
        if "mmap" not in str(exc) and "zip" not in str(exc):
            raise
        return torch.load(str(path), map_location="cpu", **kw)


def load_torch_file(path: str | Path) -> Any:
    """The object in a torch file: `weights_only=True`, else through `RestrictedUnpickler` (never runs code)."""
    path = Path(path)
    try:
        return _torch_load(path, weights_only=True)
    except pickle.UnpicklingError as exc:
        logger.info("%s holds Python objects besides tensors (%s); reading it with the restricted unpickler", path.name, str(exc).splitlines()[0][:200])
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise _unreadable(path, exc) from None
    try:
        return _torch_load(path, weights_only=False, pickle_module=restricted_pickle)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, TypeError, AttributeError) as exc:
        raise _unreadable(path, exc) from None


def _unreadable(path: Path, exc: Exception) -> CheckpointError:
    return CheckpointError(
        f"checkpoint {path} could not be read as a torch file ({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}); "
        "it is truncated or not a torch checkpoint: download it again, or convert it to .safetensors in a trusted environment."
    )


def extract_weights(obj: Any, path: str | Path) -> dict[str, torch.Tensor]:
    """The flat tensor dict of a loaded torch file: the object itself, or its `state_dict` / `module` / `model`
    entry (mmengine and DeepSpeed wrappers, nested at most twice)."""
    if isinstance(obj, dict) and "ds_version" in obj:
        # DeepSpeed's model-states file: its `module` lacks every trainable tensor DeepSpeed kept in the optimizer
        # partitions (the VLM LoRA, reference notes §5.5); loading it alone would silently drop the LoRA.
        raise CheckpointError(
            f"{path} is one file of a DeepSpeed checkpoint folder, whose VLM LoRA lives in the optimizer partitions: "
            "consolidate the folder first (DeepSpeed's zero_to_fp32.py, or the reference's scripts/deepspeed2torch.py) and pass the result."
        )
    node = obj
    for _ in range(3):
        if isinstance(node, dict) and node and all(isinstance(v, torch.Tensor) for v in node.values()):
            return dict(node)
        entry = next((k for k in WEIGHT_ENTRIES if isinstance(node, dict) and isinstance(node.get(k), dict)), None)
        if entry is None:
            break
        node = node[entry]
    if isinstance(node, dict) and node and any(isinstance(v, torch.Tensor) for v in node.values()):
        odd = sorted(k for k, v in node.items() if not isinstance(v, torch.Tensor))
        raise CheckpointError(f"checkpoint {path}: the weights entry mixes tensors with other values ({odd[:5]}); it is not a DeepGen checkpoint.")
    top = sorted(map(str, obj))[:8] if isinstance(obj, dict) else type(obj).__name__
    raise CheckpointError(
        f"checkpoint {path} holds no model weights (top-level entries: {top}; no {' / '.join(WEIGHT_ENTRIES)} dict of "
        "tensors): it is not a DeepGen checkpoint. Pick the stage checkpoint (model.pt, MR-GDPO_final.pt, iter_*.pth)."
    )
