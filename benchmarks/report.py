"""Benchmark output (JSON + markdown table) and the attention-backend micro-benchmark."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from diffusers.models.attention_dispatch import AttentionBackendName, dispatch_attention_fn

from measure import dit_forward_flops

COLUMNS = [("scenario", "scenario", "{}"), ("variant", "variant", "{}"), ("s/img (median)", "s_per_image", "{:.3f}"),
           ("spread", None, None), ("runs", "runs", "{}"), ("× baseline", "speedup", "{:.1f}"), ("encode ms", "encode_ms", "{:.0f}"),
           ("DiT ms", "dit_ms", "{:.0f}"), ("decode ms", "decode_ms", "{:.0f}"), ("peak GiB", "peak_gib", "{:.2f}"),
           ("DiT TFLOP/s", "dit_tflops", "{:.0f}"), ("% of floor", "pct_of_floor", "{:.0f}"), ("first call s", "first_call_s", "{:.2f}"),
           ("rel. L2 vs baseline", "rel_l2_vs_baseline", "{:.1e}")]


def attention_backends(config, n_txt: int = 178, iters: int = 20) -> dict:
    """Time one joint-attention call (B=2, the DiT's heads) per dispatcher backend at the benchmark's shapes."""
    heads, dim = config.num_attention_heads, config.attention_head_dim
    out: dict[str, dict] = {}
    for label, n in (("512^2 t2i", 1024 + n_txt), ("512^2 edit 1 ref", 2048 + 456), ("1024^2 t2i", 4096 + n_txt)):
        q, k, v = (torch.randn(2, n, heads, dim, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        flops = 4 * 2 * heads * n * n * dim
        row = {}
        for backend in ("_native_cudnn", "_native_flash", "_native_efficient", "native", "flash"):
            try:
                name = AttentionBackendName(backend)
                dispatch_attention_fn(q, k, v, backend=name)
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                for _ in range(iters):
                    dispatch_attention_fn(q, k, v, backend=name)
                end.record()
                torch.cuda.synchronize()
                ms = start.elapsed_time(end) / iters
                row[backend] = {"ms": ms, "tflops": flops / ms / 1e9}
            except Exception as exc:  # noqa: BLE001 - a missing backend (flash-attn) must only mark its cell
                row[backend] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
        out[f"{label} (N={n})"] = row
    return out


def _speedups(rows: list[dict]) -> None:
    base = {r["scenario"]: r["s_per_image"] for r in rows if r["variant"] == "baseline"}
    for r in rows:
        if r["scenario"] in base:
            r["speedup"] = base[r["scenario"]] / r["s_per_image"]


def _cell(row: dict, key: str | None, fmt: str | None) -> str:
    if key is None:
        return f"{row['min_s']:.3f}–{row['max_s']:.3f}"
    value = row.get(key)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return fmt.format(value)


def markdown(rows: list[dict], extra: dict) -> str:
    lines = [f"Device: {extra.get('device')}, torch {extra.get('torch')}, {extra.get('steps')} steps, CFG 4, seeded random bf16 weights.", ""]
    lines.append("| " + " | ".join(c[0] for c in COLUMNS) + " |")
    lines.append("|" + "---|" * len(COLUMNS))
    for row in rows:
        lines.append("| " + " | ".join(_cell(row, key, fmt) for _, key, fmt in COLUMNS) + " |")
    for key in sorted(k for k in extra if k.startswith(("stage2", "rl_rollout"))):
        lines.append(f"\n**{key}**: " + ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in extra[key].items()))
    if "attention_ops" in extra:
        lines.append("\n| attention call (B=2, 24 heads x 64) | " + " | ".join(next(iter(extra["attention_ops"].values())).keys()) + " |")
        lines.append("|---|" + "---|" * len(next(iter(extra["attention_ops"].values()))))
        for label, row in extra["attention_ops"].items():
            cells = [f"{v['ms']:.3f} ms ({v['tflops']:.0f} TF/s)" if "ms" in v else "n/a" for v in row.values()]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    for key in ("build_s", "compile_setup_s", "graph_capture_s", "compile_cache_loaded", "dit_gib_after_fp8", "phase_s", "skipped", "errors", "total_s"):
        if key in extra:
            lines.append(f"\n{key}: {json.dumps(extra[key], default=str)}")
    return "\n".join(lines) + "\n"


def write_reports(out: Path, rows: list[dict], extra: dict) -> None:
    _speedups(rows)
    (out / "results.json").write_text(json.dumps({"rows": rows, **extra}, indent=1, default=str))
    (out / "results.md").write_text(markdown(rows, extra))


__all__ = ["attention_backends", "dit_forward_flops", "write_reports"]
