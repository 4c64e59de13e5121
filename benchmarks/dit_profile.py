"""DiT-only diagnostics at real size: forward time per variant (CUDA-graph replay), kernel profile, accuracy.

For one batch-2 (CFG) forward at the benchmark's shapes, times eager+graphs and compiled variants, lists the
top kernels of one variant with torch.profiler, and measures each variant's relative error against an fp32
copy of the same weights (the bf16 tolerance: the eager bf16 forward's own error). Variant names combine:
`graphs` (no compile) or `compile` (regional, dynamic shapes) with `_static` (shape-specialised compile),
`_fused` (fused QKV), `_fp8` (fp8 block weights), `_mod` (adaLN modulations precomputed, as the pipeline does).
Usage: python benchmarks/dit_profile.py --out DIR [--variants graphs,compile_fused_mod,...]
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from measure import rel_l2

from deepgen_core.acceleration import (
    DiTGraphRunner,
    compile_transformer,
    fuse_qkv,
    quantize_fp8,
)
from deepgen_core.models.transformer import DeepGenSD3Transformer

SHAPES = {"t2i_512": (64, 178, 0), "edit_512_1ref": (64, 456, 1), "t2i_1024": (128, 178, 0)}


def inputs(shape: str, gen: torch.Generator):
    side, n_txt, n_refs = SHAPES[shape]
    x = torch.randn(2, 16, side, side, device="cuda", generator=gen, dtype=torch.bfloat16)
    ctx = torch.randn(2, n_txt, 4096, device="cuda", generator=gen, dtype=torch.bfloat16)
    pooled = torch.randn(2, 2048, device="cuda", generator=gen, dtype=torch.bfloat16)
    t = torch.full((2,), 700.0, device="cuda")
    refs = [[torch.randn(16, 64, 64, device="cuda", generator=gen, dtype=torch.bfloat16) for _ in range(n_refs)] for _ in range(2)] if n_refs else None
    return x, ctx, pooled, t, refs


def replay_ms(runner: DiTGraphRunner, args, iters: int = 20) -> float:
    runner(*args)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        runner(*args)
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


def top_kernels(fn, n: int = 25) -> list[dict]:
    fn()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    rows = sorted(prof.key_averages(), key=lambda e: e.device_time_total, reverse=True)[:n]
    return [{"name": e.key[:120], "ms": e.device_time_total / 1e3, "calls": e.count} for e in rows]


def main() -> None:
    parser = argparse.ArgumentParser(allow_abbrev=False)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--variants", default="graphs,graphs_mod,compile_fused,compile_fused_mod,compile_static_fused_mod,compile_fp8_mod")
    parser.add_argument("--profile", default="compile_static_fused_mod")
    parser.add_argument("--recompile-limit", type=int, default=32)
    parser.add_argument("--encoder", action="store_true", help="also time encode_prompt eager vs compiled encoder blocks")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    torch._dynamo.config.recompile_limit = args.recompile_limit  # a diagnostic script may; the library never does
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    with torch.device("cuda"):
        base = DeepGenSD3Transformer().to(torch.bfloat16).eval()
    fp32 = copy.deepcopy(base).float()
    gen = torch.Generator(device="cuda").manual_seed(0)
    data = {s: inputs(s, gen) for s in SHAPES}
    result: dict = {"variants": {}}
    with torch.no_grad():
        truth = {s: fp32(*[a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in d[:4]],
                         reference_latents=None if d[4] is None else [[r.float() for r in s_] for s_ in d[4]]).sample for s, d in data.items()}
        del fp32
        for variant in args.variants.split(","):
            torch._dynamo.reset()  # each variant compiles from scratch (shared block code objects otherwise pile up guards)
            model = copy.deepcopy(base)
            t0 = time.perf_counter()
            if "fused" in variant:
                fuse_qkv(model)
            if "fp8" in variant:
                quantize_fp8(model)
            if variant.startswith("compile"):
                compile_transformer(model, "regional", dynamic="static" not in variant)
            runner = DiTGraphRunner(model)
            row = {}
            for shape, d in data.items():
                if "_mod" in variant:
                    d = (*d, model.modulation(d[3], d[2]))  # what ModulationSchedule passes per step
                t1 = time.perf_counter()
                out = runner(*d)
                first = time.perf_counter() - t1
                err = rel_l2(out, truth[shape])
                row[shape] = {"forward_ms": replay_ms(runner, d), "first_call_s": first, "rel_err_vs_fp32": err}
            row["total_setup_s"] = time.perf_counter() - t0
            if variant == args.profile:
                d = data["t2i_512"]
                mod = model.modulation(d[3], d[2]) if "_mod" in variant else None
                row["top_kernels_t2i_512"] = top_kernels(lambda m=model, d=d, mod=mod: m(*d[:4], reference_latents=d[4], modulation=mod))
            result["variants"][variant] = row
            logging.info("%s: %s", variant, json.dumps({k: v for k, v in row.items() if k != "top_kernels_t2i_512"}))
            (args.out / "dit_profile.json").write_text(json.dumps(result, indent=1))
            del model, runner
            torch.cuda.empty_cache()
    if args.encoder:
        torch._dynamo.reset()
        result["encoder"] = encoder_timings()
        (args.out / "dit_profile.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


def encoder_timings(runs: int = 5) -> dict:
    """encode_prompt (t2i pair / 1-reference edit pair) eager vs with `compile_encoder`; relative change of the context."""
    import statistics

    from measure import reference_images
    from real_size_smoke import real_size_components

    from deepgen_core.acceleration import compile_encoder
    from deepgen_core.config import DEFAULT_EDIT_NEGATIVE_PROMPT
    from deepgen_core.pipeline import DeepGenPipeline

    pipe = DeepGenPipeline.from_components(real_size_components("cuda", torch.bfloat16))
    refs = pipe.prepare_reference_pixels(reference_images(1), 1, "dynamic", 512)
    cases = {"t2i": lambda: pipe.encode_prompt(["a red fox reading a newspaper on a park bench"], [""]),
             "edit_1ref": lambda: pipe.encode_prompt(["make the sky purple"], [DEFAULT_EDIT_NEGATIVE_PROMPT], refs)}
    out: dict = {}

    def measure(label: str) -> None:
        for case, fn in cases.items():
            t0 = time.perf_counter()
            with torch.no_grad():
                first = fn()
                torch.cuda.synchronize()
                first_s = time.perf_counter() - t0
                fn()
                times = []
                for _ in range(runs):
                    torch.cuda.synchronize()
                    t1 = time.perf_counter()
                    emb = fn()
                    torch.cuda.synchronize()
                    times.append(time.perf_counter() - t1)
            out.setdefault(case, {})[label] = {"ms": 1e3 * statistics.median(times), "first_call_s": first_s, "context": emb.prompt_embeds.float()}
            del first

    measure("eager")
    out["compiled_blocks"] = compile_encoder(pipe.encoder)
    measure("compiled")
    for case in cases:
        a, b = out[case]["eager"].pop("context"), out[case]["compiled"].pop("context")
        out[case]["rel_diff"] = rel_l2(b, a)
    return out


if __name__ == "__main__":
    main()
