"""Queue-time checks of combo (dropdown) values.

ComfyUI 0.3.64 does not compare a V3 combo's value with its options, and a node's `validate_inputs` turns off
ComfyUI's own type and range checks for every input it names. So each DeepGen node's `validate_inputs` names its
combo inputs only and checks them here; its numbers keep ComfyUI's min/max checks.
"""

from __future__ import annotations

from collections.abc import Sequence


def unknown_choice(name: str, value: object, options: Sequence[str]) -> str | None:
    """The message for a combo value that is not one of `options`, else None. A value that is not a string came
    through a link and is checked when the node runs."""
    if not isinstance(value, str) or value in options:
        return None
    return f"{name} {value!r} is not available; choose one of {list(options)}."


def check_choices(**named: tuple[object, Sequence[str]]) -> bool | str:
    """`validate_inputs`' answer for combos given as `name=(value, options)`: True, or the first refusal."""
    for name, (value, options) in named.items():
        if message := unknown_choice(name, value, options):
            return message
    return True
