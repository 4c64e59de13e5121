"""The benchmarks by CLI name; an unknown name is answered with the nearest one."""

from __future__ import annotations

import difflib

from ..errors import DeepGenInputError
from . import corebench, cvtg, dpg, gedit, geneval, imgedit, rise, uniredit, unigenbench, wise
from .base import Benchmark

BENCHMARKS: dict[str, Benchmark] = {
    m.BENCHMARK.name: m.BENCHMARK for m in (geneval, dpg, unigenbench, wise, corebench, imgedit, gedit, rise, uniredit, cvtg)
}
ALIASES = {"dpg-bench": "dpg", "dpgbench": "dpg", "t2i-corebench": "corebench", "unireditbench": "uniredit",
           "risebench": "rise", "gedit-bench": "gedit", "cvtg-2k": "cvtg", "imgedit-bench": "imgedit"}


def get_benchmark(name: str) -> Benchmark:
    """The benchmark called `name` (case-insensitive; a few spellings such as 'DPG-Bench' are accepted)."""
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key in BENCHMARKS:
        return BENCHMARKS[key]
    near = difflib.get_close_matches(key, list(BENCHMARKS) + list(ALIASES), n=1, cutoff=0.5)
    guess = f"did you mean {ALIASES.get(near[0], near[0])!r}? " if near else ""
    raise DeepGenInputError(f"unknown benchmark {name!r}; {guess}choose from {', '.join(BENCHMARKS)}.")
