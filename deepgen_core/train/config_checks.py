"""Type and range checks of training config values, run on the raw recipe + override dict before a config object,
a model or an output folder exists (`optim.lr=abc` must fail here, not inside AdamW an hour later).

Types come from the dataclass annotations; ranges from `RANGES` (dotted field names) plus two defaults: every number
must be finite and every integer >= 0.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any

from ..errors import DeepGenInputError

INF = math.inf
# (minimum, maximum, minimum excluded) of fields whose range is narrower than "finite; integers >= 0".
RANGES: dict[str, tuple[float, float, bool]] = {
    "optim.lr": (0, INF, True), "optim.eps": (0, INF, True), "optim.weight_decay": (0, INF, False), "optim.grad_clip": (0, INF, False),
    "optim.warmup_start_factor": (0, 1, False), "optim.min_lr_ratio": (0, 1, False),
    "micro_batch_size": (1, INF, False), "grad_accum": (1, INF, False), "max_steps": (1, INF, False), "max_minutes": (0, INF, False),
    "lora.rank": (1, INF, False), "lora.alpha": (0, INF, True), "lora.dropout": (0, 1, False),
    "data.image_size": (32, 8192, False), "data.max_aspect": (1, INF, False), "data.max_references": (1, INF, False),
    "logging.log_every": (1, INF, False), "logging.sample_steps": (1, 1000, False), "logging.sample_size": (16, 8192, False),
    "rollout.group_size": (2, INF, False), "rollout.prompts_per_step": (1, INF, False), "rollout.eta": (0, 10, False),
    "rollout.num_inference_steps": (1, 1000, False), "rollout.guidance_scale": (0, 100, False),
    "rollout.height": (16, 8192, False), "rollout.width": (16, 8192, False),
    "policy.clip_range": (0, INF, True), "policy.kl_beta": (0, INF, False), "policy.micro_batch_size": (1, INF, False),
    "policy.advantage_clip": (0, INF, True), "policy.sft_every": (1, INF, False), "policy.sft_micro_batch_size": (1, INF, False),
    "run.max_steps": (1, INF, False), "run.log_every": (1, INF, False), "run.max_minutes": (0, INF, False),
    "batch_size": (1, INF, False),
}
# str fields that YAML 1.1 may read as a boolean (`mixed_precision: no`); their config turns False into "no".
YAML_BOOL_STRINGS = ("mixed_precision",)


def check_section(cls: type, data: dict[str, Any], where: str = "") -> None:
    """Raise `DeepGenInputError` naming the field, the value and the fix when a value of `data` does not fit the
    type or range of its field in dataclass `cls` (nested sections and lists of sections included)."""
    hints = typing.get_type_hints(cls)
    defaults = {f.name: f for f in dataclasses.fields(cls)}
    for key, value in data.items():
        if key in hints:
            _check(value, hints[key], _join(where, key), defaults[key])


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _default(spec: dataclasses.Field | None) -> Any:
    if spec is None:
        return dataclasses.MISSING
    if spec.default is not dataclasses.MISSING:
        return spec.default
    return dataclasses.MISSING


def _describe(hint: Any) -> str:
    if hint is type(None):
        return "null"
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if dataclasses.is_dataclass(hint):
        return "a section (a mapping of its fields)"
    if origin is tuple and Ellipsis not in args:
        return f"a list of {len(args)} items"
    if origin in (list, tuple, dict):
        return {list: "a list", tuple: "a list", dict: "a mapping"}[origin]
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(hint, getattr(hint, "__name__", str(hint)))


def _fail(path: str, hint: Any, value: Any, spec: dataclasses.Field | None) -> None:
    default = _default(spec)
    if isinstance(default, tuple):
        default = list(default)
    example = f"; for example {path}={default!r} (the default)" if default is not dataclasses.MISSING and default is not None else ""
    if dataclasses.is_dataclass(hint):
        name = dataclasses.fields(hint)[0].name
        example = f"; set its fields instead, e.g. {path}.{name}=VALUE"
    raise DeepGenInputError(f"config field {path} must be {_describe(hint)}, got {value!r} ({type(value).__name__}){example}.")


def _check(value: Any, hint: Any, path: str, spec: dataclasses.Field | None = None) -> None:
    if not _fits(value, hint, path):
        _fail(path, hint, value, spec)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        _check_range(value, path, _default(spec))


def _fits(value: Any, hint: Any, path: str) -> bool:  # noqa: PLR0911 (one branch per kind of annotation)
    if hint is Any:
        return True
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a, path) for a in args)
    if hint is type(None):
        return value is None
    if dataclasses.is_dataclass(hint):
        if isinstance(value, dict):
            check_section(hint, value, path)
            return True
        return isinstance(value, hint)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)) or (origin is tuple and Ellipsis not in args and len(value) != len(args)):
            return False
        items = args if origin is tuple and Ellipsis not in args else [args[0] if args else Any] * len(value)
        for i, (item, item_hint) in enumerate(zip(value, items)):
            _check(item, item_hint, f"{path}[{i}]")
        return True
    if origin is dict:
        if not isinstance(value, dict):
            return False
        for key, item in value.items():
            _check(item, args[1] if args else Any, f"{path}.{key}")
        return True
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str) or (value is False and path.rsplit(".", 1)[-1] in YAML_BOOL_STRINGS)
    return isinstance(value, hint) if isinstance(hint, type) else True


def _check_range(value: float, path: str, default: Any = dataclasses.MISSING) -> None:
    if not math.isfinite(value):
        raise DeepGenInputError(f"config field {path} must be a finite number, got {value!r}.")
    low, high, open_low = RANGES.get(path, RANGES.get(path.split(".", 1)[-1], (0 if isinstance(value, int) else -INF, INF, False)))
    if value < low or (open_low and value == low) or value > high:
        bound = f"> {low:g}" if open_low else f">= {low:g}"
        upper = f" and <= {high:g}" if high != INF else ""
        nearest = min(max(value, low), high)
        advice = f"; the nearest valid value is {nearest:g}"
        if open_low and value <= low:
            advice = f"; for example {path}={default!r} (the default)" if isinstance(default, (int, float)) else ""
        raise DeepGenInputError(f"config field {path} must be {bound}{upper}, got {value!r}{advice}.")
