"""Measurement helpers for the benchmark suite: FLOP counts, timed generation with a phase split, result rows."""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

FLOOR_TFLOPS = 800.0  # measured large-matmul ceiling of this workplace's H100s (anchors.md §6.1)
PEAK_TFLOPS = 989.4  # H100 SXM dense bf16 peak, for MFU


@dataclass(frozen=True)
class Scenario:
    name: str
    size: int
    batch: int
    n_refs: int = 0

    @property
    def is_edit(self) -> bool:
        return self.n_refs > 0


def dit_forward_flops(config, n_img: int, n_txt: int) -> float:
    """anchors.md §6.3: one DiT forward for one sample (linear layers + joint and dual attention)."""
    d = config.num_attention_heads * config.attention_head_dim
    layers, n_dual = config.num_layers, len(config.dual_attention_layers)
    n = n_img + n_txt
    macs = (layers * 12 * d * d * n_img + n_dual * 4 * d * d * n_img + ((layers - 1) * 12 * d * d + 3 * d * d) * n_txt
            + layers * 2 * n * n * d + n_dual * 2 * n_img * n_img * d)
    return 2.0 * macs


def image_tokens(size: int, n_refs: int, ref_size: int = 512) -> int:
    return (size // 16) ** 2 + n_refs * (ref_size // 16) ** 2


def rel_l2(value: torch.Tensor, reference: torch.Tensor) -> float:
    """|value - reference| / |reference| (L2 over all elements, in fp32)."""
    reference = reference.float()
    return ((value.float() - reference).norm() / reference.norm()).item()


def reference_images(n: int) -> list[Image.Image]:
    """`n` seeded grey-noise 512² references. (Not PIL's `Image.effect_noise`: its unseeded RNG draws a
    different reference every call, so edits compared across variants would differ by their input.)"""
    rng = np.random.default_rng(0)
    return [Image.fromarray(np.clip(rng.normal(128, 64 + 16 * i, (512, 512)), 0, 255).astype(np.uint8)).convert("RGB") for i in range(n)]


class StepCounter:
    """A per-step callback like the ComfyUI node's (progress count; no host sync)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, pipe, step, timestep, tensors):
        self.calls += 1


T2I_PROMPT = "a photograph of a red fox reading a newspaper on a park bench, morning light, detailed fur"
EDIT_PROMPT = "make the sky purple and add a small boat"


def generate(pipe, scenario: Scenario, steps: int, seed: int, guidance: float = 4.0) -> tuple[dict, torch.Tensor]:
    """One image batch through the pipeline's step methods (the ComfyUI path), with CUDA-event phase times."""
    prompts = [EDIT_PROMPT if scenario.is_edit else T2I_PROMPT] * scenario.batch
    events = [torch.cuda.Event(enable_timing=True) for _ in range(4)]
    counter = StepCounter()
    generator = torch.Generator().manual_seed(seed)
    torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.no_grad():
        events[0].record()
        refs = pipe.prepare_reference_pixels(reference_images(scenario.n_refs), scenario.batch, "dynamic", 512) if scenario.is_edit else None
        negatives = [pipe_default_negative(scenario)] * scenario.batch
        embeddings = pipe.encode_prompt(prompts, negatives, refs)
        latents = pipe.prepare_latents(scenario.batch, scenario.size, scenario.size, generator)
        ref_latents = pipe.encode_reference_latents(refs, generator) if refs is not None else None
        events[1].record()
        latents = pipe.denoise(latents, embeddings, ref_latents, steps, guidance, callback_on_step_end=counter)
        events[2].record()
        pipe.decode_latents(latents)
        events[3].record()
    torch.cuda.synchronize()
    total = time.perf_counter() - start
    if counter.calls != steps:
        raise AssertionError(f"the step callback ran {counter.calls} times for {steps} steps")
    split = {"total_s": total, "encode_ms": events[0].elapsed_time(events[1]), "dit_ms": events[1].elapsed_time(events[2]),
             "decode_ms": events[2].elapsed_time(events[3]), "n_txt": embeddings.prompt_embeds.shape[1]}
    return split, latents


def live_allocations(top: int = 8) -> list[tuple[str, float]]:
    """GiB of live CUDA allocations grouped by the innermost project / library frames that made them (needs
    `torch.cuda.memory._record_memory_history()` on before the allocations; older ones show as '?')."""
    keep = ("/deepgen_core/", "/benchmarks/", "/diffusers/", "/transformers/", "/accelerate/", "_inductor", "_dynamo", "cuda/graphs")
    sites: dict[str, int] = {}
    for segment in torch.cuda.memory._snapshot()["segments"]:
        for block in segment["blocks"]:
            if block["state"] != "active_allocated":
                continue
            frames = [f for f in block.get("frames", []) if any(k in f["filename"] for k in keep)][:3]
            site = " < ".join(f"{f['filename'].rsplit('/', 2)[-1]}:{f['line']}:{f['name']}" for f in frames) or "?"
            sites[site] = sites.get(site, 0) + block["size"]
    return [(site, size / 2**30) for site, size in sorted(sites.items(), key=lambda kv: -kv[1])[:top]]


def pipe_default_negative(scenario: Scenario) -> str:
    from deepgen_core.config import DEFAULT_EDIT_NEGATIVE_PROMPT

    return DEFAULT_EDIT_NEGATIVE_PROMPT if scenario.is_edit else ""


def benchmark_scenario(pipe, scenario: Scenario, steps: int, runs: int, warmup: int = 1, reference: torch.Tensor | None = None) -> dict:
    """Warm-up call(s) (timed: first-call overhead), then `runs` timed calls; seconds are per image."""
    first = []
    for _ in range(warmup):
        split, latents = generate(pipe, scenario, steps, seed=42)
        first.append(split["total_s"])
    torch.cuda.reset_peak_memory_stats()
    splits = []
    for _ in range(runs):
        split, latents = generate(pipe, scenario, steps, seed=42)
        splits.append(split)
    per_image = [s["total_s"] / scenario.batch for s in splits]
    median = statistics.median(per_image)
    cfg = pipe.transformer.config
    n_txt = splits[0]["n_txt"]
    flops_image = steps * 2 * dit_forward_flops(cfg, image_tokens(scenario.size, scenario.n_refs), n_txt)
    dit_s = statistics.median(s["dit_ms"] for s in splits) / 1e3
    row = {
        "s_per_image": median, "min_s": min(per_image), "max_s": max(per_image), "runs": len(per_image),
        "first_call_s": first[0] if first else None, "steady_call_s": statistics.median(s["total_s"] for s in splits),
        "encode_ms": statistics.median(s["encode_ms"] for s in splits), "dit_ms": dit_s * 1e3,
        "decode_ms": statistics.median(s["decode_ms"] for s in splits), "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
        "n_txt": n_txt, "dit_tflops": flops_image * scenario.batch / dit_s / 1e12,
        "floor_s_per_image": flops_image / (FLOOR_TFLOPS * 1e12),
    }
    row["pct_of_floor"] = 100.0 * row["floor_s_per_image"] / median
    if reference is not None and reference.shape == latents.shape:
        diff = (latents.float() - reference.float())
        row["max_abs_diff_vs_baseline"] = diff.abs().max().item()
        row["rel_l2_vs_baseline"] = rel_l2(latents, reference)
    row["latents"] = latents
    return row


def timed(fn: Callable[[], object], runs: int, warmup: int = 1) -> tuple[list[float], float]:
    """Wall times of `runs` calls of `fn` after `warmup` calls (each synchronised); returns (times, first_s)."""
    first = 0.0
    for i in range(warmup):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        if i == 0:
            first = time.perf_counter() - t0
    times = []
    for _ in range(runs):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return times, first


def gpu_events(prof: torch.profiler.profile) -> list[tuple[float, float, str]]:
    """(start µs, end µs, name) of every GPU kernel / copy / memset of a finished profile, by start time."""
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        prof.export_chrome_trace(f.name)
        trace = json.loads(Path(f.name).read_text())
    events = [(e["ts"], e["ts"] + e.get("dur", 0), e["name"]) for e in trace.get("traceEvents", [])
              if e.get("ph") == "X" and e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")]
    return sorted(events)


def kernel_category(name: str) -> str:
    """The kind of a GPU kernel, from its name: attention, gemm, triton (inductor), optimizer, eager elementwise, copy or other."""
    low = name.lower()
    if any(k in low for k in ("fmha", "sdpa", "flash", "attention")):
        return "attention"
    if any(k in low for k in ("nvjet", "gemm", "xmma", "cutlass", "cublas")):
        return "gemm"
    if low.startswith("triton"):
        return "triton"
    if any(k in low for k in ("multi_tensor_apply", "adam")):
        return "optimizer"  # fused AdamW, and clipping's foreach norm / scale
    if any(k in low for k in ("elementwise", "reduce_kernel")):
        return "eager elementwise"
    if any(k in low for k in ("copy", "memcpy", "cat", "memset")):
        return "copy"
    return "other"


def busy_and_gaps(events: list[tuple[float, float, str]], top: int = 8) -> dict:
    """GPU busy time (union of intervals), the idle time between the first and last event, and the largest gaps."""
    if not events:
        return {"kernels": 0}
    busy, gaps, end, last_name = 0.0, [], events[0][0], None
    for start, stop, name in events:
        if start > end:
            gaps.append((start - end, last_name, name))
        busy += max(0.0, stop - max(start, end))
        if stop > end:
            end, last_name = stop, name
    span = end - events[0][0]
    gaps.sort(reverse=True)
    by_kind: dict[str, list] = {}
    for start, stop, name in events:
        entry = by_kind.setdefault(kernel_category(name), [0, 0.0])
        entry[0] += 1
        entry[1] += (stop - start) / 1e3
    return {"kernels": len(events), "gpu_span_ms": span / 1e3, "gpu_busy_ms": busy / 1e3, "idle_ms": (span - busy) / 1e3,
            "gaps_over_20us": sum(1 for g in gaps if g[0] > 20), "idle_in_gaps_over_20us_ms": sum(g[0] for g in gaps if g[0] > 20) / 1e3,
            "kernel_ms_by_kind": {k: {"count": c, "ms": round(ms, 2)} for k, (c, ms) in sorted(by_kind.items())},
            "largest_gaps": [{"us": round(g, 1), "after": a[:80] if a else None, "before": b[:80]} for g, a, b in gaps[:top]]}
