"""Checks of user-supplied generation inputs, run at the API boundary before any model work (docs/inputs.md).

Every numeric input is checked for type, finiteness and range, and a rejection names the input, the value and the
nearest valid value. Prompts are checked for the model's control tokens and against the token limit. The ranges
live in `LIMITS` so that the pipeline, the CLI, the ComfyUI sampler and the docs agree.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import random
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import DeepGenInputError

SEED_MAX = 2**64 - 1  # torch.Generator.manual_seed takes 0 .. 2**64 - 1 (ComfyUI's seed widget has the same range)
RANDOM_SEED = -1  # the CLI's "pick a random seed" value, as ComfyUI users expect
MAX_PROMPT_TOKENS = 1024  # the reference trains on at most 1,024 text tokens (reference notes §2.2); longer prompts draw noise


@dataclass(frozen=True)
class Limit:
    """The valid range of one numeric input. `integer`: whole numbers only; `low_open`: the minimum itself is
    excluded; `default`: what to suggest for a NaN."""

    minimum: float
    maximum: float
    integer: bool = False
    low_open: bool = False
    default: float | None = None


LIMITS: dict[str, Limit] = {
    "num_inference_steps": Limit(1, 1000, integer=True, default=50),
    "guidance_scale": Limit(0.0, 100.0, default=4.0),
    "shift": Limit(0.1, 100.0, default=3.0),
    "num_images_per_prompt": Limit(1, 256, integer=True, default=1),
    "reference_size": Limit(32, 8192, integer=True, default=512),
    "eta": Limit(0.0, 10.0, default=1.0),
    "seed": Limit(0, SEED_MAX, integer=True, default=42),
    "num_think_tokens": Limit(0, 4096, integer=True),
    "height": Limit(16, 8192, integer=True),
    "width": Limit(16, 8192, integer=True),
}


def _nearest(value: float, limit: Limit) -> float | int | None:
    if isinstance(value, float) and math.isnan(value):
        return limit.default
    nearest = min(max(value, limit.minimum), limit.maximum)
    if limit.integer:
        nearest = int(round(nearest)) if math.isfinite(nearest) else int(limit.maximum)
        nearest = min(max(nearest, int(limit.minimum)), int(limit.maximum))
    return nearest


def check_number(name: str, value: object, limit: Limit | None = None, hint: str = "") -> float | int:
    """`value` if it is a finite number of the right kind inside `limit` (default `LIMITS[name]`), else a
    `DeepGenInputError` naming the input, the value received and the nearest valid value. Returns ints as int."""
    limit = limit or LIMITS[name]
    kind = "an integer" if limit.integer else "a number"
    low = ">" if limit.low_open else ">="
    fmt = (lambda x: str(int(x))) if limit.integer else (lambda x: f"{x:g}")
    span = f"{kind} {low} {fmt(limit.minimum)} and <= {fmt(limit.maximum)}"
    hint = f" {hint}" if hint else ""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise DeepGenInputError(f"{name} must be {span}, got {value!r} ({type(value).__name__}).{hint}")
    number = float(value)
    if limit.integer and not isinstance(value, numbers.Integral) and math.isfinite(number) and not number.is_integer():
        nearest = _nearest(number, limit)
        raise DeepGenInputError(f"{name} must be {span}, got {value!r}; the nearest valid value is {nearest}.{hint}")
    too_low = number <= limit.minimum if limit.low_open else number < limit.minimum
    if math.isnan(number) or too_low or number > limit.maximum:
        nearest = _nearest(number, limit)
        advice = f"; the nearest valid value is {nearest}" if nearest is not None and not limit.low_open else ""
        if nearest is None or (limit.low_open and too_low):
            advice = f"; for example {limit.default}" if limit.default is not None else ""
        raise DeepGenInputError(f"{name} must be {span}, got {value!r}{advice}.{hint}")
    return int(number) if limit.integer and not isinstance(value, numbers.Integral) else value


def check_optional_number(name: str, value: object, limit: Limit | None = None, hint: str = "") -> float | int | None:
    return None if value is None else check_number(name, value, limit, hint)


def check_sampling(num_inference_steps: object, guidance_scale: object, shift: object = None, eta: object = None) -> None:
    """The denoising loop's numbers (pipeline, ComfyUI sampler, RL rollouts); `shift`/`eta` None: not given."""
    check_number("num_inference_steps", num_inference_steps, hint="The reference uses 50.")
    check_number("guidance_scale", guidance_scale, hint="Values <= 1 disable CFG; the reference uses 4.0.")
    check_optional_number("shift", shift, hint="Leave it unset (None) for the model's own shift, 3.0.")
    check_optional_number("eta", eta, hint="eta is the SDE samplers' noise level (1.0 in RL rollouts).")


def check_sampler_node(seed: object, steps: object, cfg: object, shift: object, sampler: str, eta: object) -> None:
    """The DeepGen Sampler node's widgets (ComfyUI enforces the widget ranges only in its own front end)."""
    with named_as({"num_inference_steps": "steps", "guidance_scale": "cfg"}):
        check_number("seed", seed)
        check_sampling(steps, cfg, shift, None if sampler == "euler" else eta)


@contextlib.contextmanager
def named_as(names: dict[str, str]):
    """Re-raise a `DeepGenInputError` about input `k` as one about `names[k]` (a host's name for it: a CLI flag,
    a node widget)."""
    try:
        yield
    except DeepGenInputError as exc:
        message = str(exc)
        name = next((n for n in names if message.startswith(n)), None)
        if name is None:
            raise
        raise DeepGenInputError(names[name] + message[len(name):]) from None


def check_size(name: str, value: object, unit: int, maximum: int) -> int:
    """An output side: an integer multiple of `unit` in [unit, maximum], with the nearest valid value on error."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise DeepGenInputError(f"{name} must be a positive multiple of {unit} up to {maximum}, got {value!r}; for example {unit * max(1, 512 // unit)}.")
    number = float(value)
    nearest = min(max(unit, int(round(number / unit)) * unit), maximum // unit * unit)
    if not number.is_integer() or number <= 0 or int(number) % unit:
        raise DeepGenInputError(f"{name} must be a positive multiple of {unit}, got {value!r}; the nearest valid value is {nearest}.")
    if number > maximum:
        raise DeepGenInputError(f"{name}={value!r} exceeds the DiT position table ({maximum} px); use at most {maximum}.")
    return int(number)


def resolve_seed(seed: object) -> int:
    """A seed in 0 .. 2**64 - 1, or -1 for a random one (drawn here, so the caller can log it for reproduction)."""
    if isinstance(seed, numbers.Integral) and not isinstance(seed, bool) and seed == RANDOM_SEED:
        return random.SystemRandom().randrange(0, 2**32)
    return check_number("seed", seed, hint="Pass -1 for a random seed (it is printed so the image can be reproduced).")


# ------------------------------------------------------------------------------------------------ prompts


def control_tokens(tokenizer) -> list[str]:
    """The tokenizer's special tokens that plain text must not spell (`<|image_pad|>`, `<|im_end|>`, ...)."""
    decoder = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    found = {t.content for t in decoder.values() if getattr(t, "special", False)}
    found.update(getattr(tokenizer, "all_special_tokens", []) or [])
    return sorted(t for t in found if t)


def check_prompts(tokenizer, prompts: Sequence[str], name: str = "prompt", limit: int = MAX_PROMPT_TOKENS) -> None:
    """Refuse prompts that spell the model's control tokens (they would be read as image placeholders or turn
    ends) and prompts longer than `limit` tokens (the training budget; longer ones silently draw noise)."""
    tokens = control_tokens(tokenizer)
    for i, text in enumerate(prompts):
        where = name if len(prompts) == 1 else f"{name} {i}"
        hits = [t for t in tokens if t in text]
        if hits:
            raise DeepGenInputError(
                f"{where} contains the model's control token(s) {hits}, which plain text may not spell; remove them "
                "(to pass reference images use the image argument, not placeholder tokens).")
    if not prompts:
        return
    lengths = [len(ids) for ids in tokenizer(list(prompts))["input_ids"]]
    for i, n in enumerate(lengths):
        if n > limit:
            where = name if len(prompts) == 1 else f"{name} {i}"
            raise DeepGenInputError(
                f"{where} has {n} tokens; DeepGen reads at most {limit} (its training budget, longer prompts give "
                f"noise): shorten it by {n - limit} tokens (about {4 * (n - limit)} characters).")


def check_prompt_pair(tokenizer, prompt: str, negative_prompt: str) -> None:
    """`check_prompts` for one prompt and its negative (the ComfyUI encode node)."""
    check_prompts(tokenizer, [prompt])
    check_prompts(tokenizer, [negative_prompt], "negative_prompt")


def check_think_tokens(value: object, trained: int) -> int | None:
    """None (all trained think tokens) or a count in 0..trained."""
    if value is None:
        return None
    return check_number("num_think_tokens", value, Limit(0, trained, integer=True, default=trained), hint="None uses all trained think tokens.")
