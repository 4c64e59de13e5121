"""Speed and memory levers at real size, against the reference-maths baseline, in one process (GPU).

Seeded random weights at the real sizes (`real_size_smoke.real_size_components`), 50 steps, CFG 4, batch 1.
Phases (`--phases`, in this order):

- `baseline`: the reference's DiT attention maths, eager (`baseline.py`): the side-by-side reference.
- `ladder`: memory configurations (bf16 / fp8 weights of the DiT and of the encoder, offload "model", VAE tiling,
  torchao's float8 in place of `FP8Linear`), each on a freshly built pipeline (same seed, same weights): s/image,
  peak allocated and reserved memory, relative L2 of the final latents against the bf16 default path. Then each
  configuration runs once more under `torch.cuda.set_per_process_memory_fraction` for the smallest emulated card
  (`CARDS_GB`) its allocated peak fits (and the next one if that runs out of memory).
- `attention`: one attention call at the DiT's shapes (B=2, 24 heads of 64) through torch's SDPA kernels and,
  where installed, SageAttention (Triton, int8 q/k) and flash-attn-4: time and error against fp32.
- `tiny_fp8`: DeepGen-Tiny's held-out t2i/edit metrics with and without fp8 weights (DiT + encoder).

    python3 benchmarks/levers.py --out DIR [--phases attention,baseline,ladder,tiny_fp8] [--steps 50]

Writes DIR/levers.json and DIR/levers.md (rewritten after every phase). Not part of the test suite.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from baseline import use_reference_attention
from measure import Scenario, benchmark_scenario, generate, rel_l2
from real_size_smoke import real_size_components

from deepgen_core.pipeline import DeepGenPipeline

logger = logging.getLogger("deepgen.bench")
T2I_512, EDIT_512, T2I_1024 = Scenario("t2i_512_b1", 512, 1), Scenario("edit_512_1ref", 512, 1, 1), Scenario("t2i_1024_b1", 1024, 1)
CARDS_GB = (6, 8, 12, 16, 24)
CONTEXT_GIB = 0.5  # CUDA context + kernels outside torch's allocator on a consumer card (measured below too)
# name -> (settings, scenarios). Settings: fp8 (DiT: "ours" | "torchao"), fp8_encoder, offload, vae_tiling.
CONFIGS: dict[str, tuple[dict, tuple[Scenario, ...]]] = {
    "bf16 (default)": ({}, (T2I_1024, EDIT_512, T2I_512)),
    "bf16 + offload model": ({"offload": "model"}, (T2I_1024, EDIT_512)),
    "fp8 DiT": ({"fp8": "ours"}, (T2I_1024, EDIT_512)),
    "fp8 DiT (torchao rowwise)": ({"fp8": "torchao"}, (T2I_1024, T2I_512)),
    "fp8 DiT + encoder": ({"fp8": "ours", "fp8_encoder": True}, (T2I_1024, EDIT_512, T2I_512)),
    "fp8 DiT + encoder + VAE tiling": ({"fp8": "ours", "fp8_encoder": True, "vae_tiling": True}, (T2I_1024,)),
    "fp8 DiT + encoder + offload model": ({"fp8": "ours", "fp8_encoder": True, "offload": "model"}, (T2I_1024, EDIT_512)),
    "fp8 DiT + encoder + offload model + VAE tiling": ({"fp8": "ours", "fp8_encoder": True, "offload": "model", "vae_tiling": True}, (T2I_1024,)),
}


def usable_gib(card_gb: int) -> float:
    """What torch's allocator may hold on a card sold as `card_gb` GB (graphics memory is sold in GiB: an "8 GB"
    card reports ~8190 MiB), less the context."""
    return card_gb - CONTEXT_GIB


def torchao_fp8(transformer: torch.nn.Module) -> int:
    """torchao's float8 (dynamic row-wise activation scales, row-wise weight scales) on the DiT blocks' Linears."""
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    count = 0

    def wanted(module: torch.nn.Module, fqn: str) -> bool:
        nonlocal count
        hit = isinstance(module, torch.nn.Linear) and fqn.startswith("transformer_blocks.")
        count += hit
        return hit

    quantize_(transformer, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()), filter_fn=wanted)
    return count


class Levers:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args, self.rows, self.extra = args, [], {"errors": {}, "phase_s": {}}
        self.reference: dict[str, torch.Tensor] = {}  # bf16 default latents per scenario
        self.pipe: DeepGenPipeline | None = None

    # ------------------------------------------------------------------------------------------------ helpers

    def build(self, fp8=None, fp8_encoder=False, offload="none", vae_tiling=False) -> DeepGenPipeline:
        self.pipe = None
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.set_per_process_memory_fraction(1.0)
        pipe = DeepGenPipeline.from_components(real_size_components("cuda", torch.bfloat16))
        if fp8 == "torchao":
            self.extra["torchao_linears"] = torchao_fp8(pipe.transformer)
        pipe.enable_fast_path(fp8=fp8 == "ours", fp8_encoder=fp8_encoder)
        pipe.set_offload(offload, "cuda")
        if vae_tiling:
            pipe.enable_vae_tiling(True)
        gc.collect()
        torch.cuda.empty_cache()
        self.pipe = pipe
        return pipe

    def row(self, scenario: Scenario, variant: str, runs: int, warmup: int = 1, **info) -> dict:
        torch.cuda.reset_peak_memory_stats()
        row = benchmark_scenario(self.pipe, scenario, self.args.steps, runs, warmup)
        latents = row.pop("latents")
        row.update(scenario=scenario.name, variant=variant, peak_reserved_gib=torch.cuda.max_memory_reserved() / 2**30,
                   resident_gib=torch.cuda.memory_allocated() / 2**30, **info)
        ref = self.reference.get(scenario.name)
        if ref is None and variant.startswith("bf16 (default)"):
            self.reference[scenario.name] = latents
        elif ref is not None:
            row["rel_l2_vs_bf16_default"] = rel_l2(latents, ref)
        self.rows.append(row)
        logger.info("%s / %s: %.3f s/img, peak %.2f GiB (reserved %.2f)", scenario.name, variant, row["s_per_image"], row["peak_gib"], row["peak_reserved_gib"])
        return row

    def fits(self, scenario: Scenario, card_gb: int) -> dict:
        """One generation with the allocator capped at the emulated card's usable memory."""
        total = torch.cuda.get_device_properties(0).total_memory
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.set_per_process_memory_fraction(min(1.0, usable_gib(card_gb) * 2**30 / total))
        try:
            t0 = time.perf_counter()
            generate(self.pipe, scenario, self.args.steps, seed=42)
            return {"card_gb": card_gb, "ok": True, "s": time.perf_counter() - t0}
        except torch.OutOfMemoryError as exc:
            return {"card_gb": card_gb, "ok": False, "error": str(exc)[:200]}
        finally:
            torch.cuda.set_per_process_memory_fraction(1.0)

    def write(self) -> None:
        out = self.args.out
        (out / "levers.json").write_text(json.dumps({"rows": self.rows, **self.extra}, indent=1, default=str))
        (out / "levers.md").write_text(markdown(self.rows, self.extra))

    # ------------------------------------------------------------------------------------------------ phases

    def baseline(self) -> None:
        self.build()
        use_reference_attention(self.pipe.transformer, True)
        self.pipe.enable_fast_path(cuda_graphs=False)
        for scenario, warmup in ((T2I_512, 1), (EDIT_512, 1), (T2I_1024, 0)):  # eager: no capture or compile to warm
            self.row(scenario, "baseline (reference maths, eager)", runs=1, warmup=warmup)

    def ladder(self) -> None:
        base = {r["scenario"]: r["s_per_image"] for r in self.rows if r["variant"].startswith("baseline")}
        for name in self.args.configs.split(",") if self.args.configs else CONFIGS:
            settings, scenarios = CONFIGS[name]
            if time.perf_counter() - self.start > self.args.budget_s:
                self.extra.setdefault("skipped", []).append(name)
                continue
            try:
                self.build(**settings)
                self.extra.setdefault("weights_gib", {})[name] = torch.cuda.memory_allocated() / 2**30
                for scenario in scenarios:
                    row = self.row(scenario, name, runs=2, settings=settings)
                    if scenario.name in base:
                        row["speedup"] = base[scenario.name] / row["s_per_image"]
                    # the allocator frees its cache before it gives up, so the allocated peak decides what fits
                    for card in [c for c in CARDS_GB if row["peak_gib"] <= usable_gib(c)][:2]:
                        row["emulated"] = self.fits(scenario, card)
                        if row["emulated"]["ok"]:
                            break
                    self.write()
            except Exception as exc:  # noqa: BLE001 - one failed configuration must not lose the others of a scarce device run
                logger.exception("configuration %s failed", name)
                self.extra["errors"][name] = f"{type(exc).__name__}: {exc}"[:1500]
        self.pipe = None
        self.extra["ladder"] = ladder_table(self.rows)

    def attention(self) -> None:
        n_txt = next((r["n_txt"] for r in self.rows if r["scenario"] == T2I_512.name), 178)  # 178: the t2i prompt
        self.extra["attention_ops"] = {f"{size}^2 (N={(size // 16) ** 2 + n_txt})": attention_ops((size // 16) ** 2 + n_txt) for size in (512, 1024)}

    def tiny_fp8(self) -> None:
        from deepgen_core.presets import deepgen_tiny_dir
        from deepgen_core.tiny_world.evaluate import evaluate_all

        out = {}
        for label, kwargs in (("fp32", {}), ("fp32 + fp8 weights (DiT + encoder)", {"fp8": True, "fp8_encoder": True})):
            pipe = DeepGenPipeline.from_pretrained(deepgen_tiny_dir(), torch_dtype=torch.float32).to("cuda")
            pipe.enable_fast_path(**kwargs)
            out[label] = evaluate_all(pipe, n_t2i=64, n_edit=64, n_text=0, steps=20, batch=64)
        self.extra["tiny_fp8"] = out

    def run(self) -> None:
        self.start = time.perf_counter()
        self.extra.update(device=torch.cuda.get_device_name(), torch=torch.__version__, steps=self.args.steps)
        free, total = torch.cuda.mem_get_info()
        self.extra["context_gib"] = (total - free) / 2**30 - torch.cuda.memory_reserved() / 2**30
        for name in self.args.phases.split(","):
            t0 = time.perf_counter()
            try:
                getattr(self, name)()
            except Exception as exc:  # noqa: BLE001 - record and go on to the next phase
                logger.exception("phase %s failed", name)
                self.extra["errors"][name] = f"{type(exc).__name__}: {exc}"[:1500]
            self.extra["phase_s"][name] = time.perf_counter() - t0
            self.write()


def attention_ops(n: int, heads: int = 24, dim: int = 64, batch: int = 2) -> dict:
    """ms and relative error (vs fp32 maths) of one (B, H, N, D) attention per kernel."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from triton.testing import do_bench

    q, k, v = (torch.randn(batch, heads, n, dim, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    ref = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float())
    kernels = {f"sdpa {b.name.lower()}": (lambda b=b: _sdpa(q, k, v, b, sdpa_kernel)) for b in
               (SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION)}
    try:
        from sageattention import sageattn

        kernels["sageattention (triton, int8 qk)"] = lambda: sageattn(q, k, v, tensor_layout="HND", is_causal=False)
    except ImportError as exc:
        kernels["sageattention"] = exc
    try:
        from flash_attn.cute import flash_attn_func

        kernels["flash-attn-4"] = lambda: flash_attn_func(*(t.transpose(1, 2) for t in (q, k, v)))[0].transpose(1, 2)
    except ImportError as exc:
        kernels["flash-attn-4"] = exc
    flops = 4 * batch * heads * n * n * dim
    out = {}
    for name, fn in kernels.items():
        if isinstance(fn, Exception):
            out[name] = {"error": f"{type(fn).__name__}: {fn}"[:200]}
            continue
        try:
            result = fn()
            ms = do_bench(fn, warmup=25, rep=100, return_mode="median")
            out[name] = {"ms": ms, "tflops": flops / ms / 1e9, "rel_err": rel_l2(result, ref)}
        except Exception as exc:  # noqa: BLE001 - a kernel that cannot run here marks its cell only
            out[name] = {"error": f"{type(exc).__name__}: {exc}"[:200]}
    return out


def _sdpa(q, k, v, backend, sdpa_kernel):
    with sdpa_kernel(backend):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v)


def ladder_table(rows: list[dict]) -> dict:
    """Per scenario and emulated card: the fastest configuration that ran under that card's cap (or a smaller
    one's), and its s/image."""
    table: dict = {}
    for scenario in {r["scenario"] for r in rows}:
        candidates = [r for r in rows if r["scenario"] == scenario and r.get("emulated", {}).get("ok")]
        for card in CARDS_GB:
            fitting = [r for r in candidates if r["emulated"]["card_gb"] <= card]
            best = min(fitting, key=lambda r: r["s_per_image"], default=None)
            table.setdefault(scenario, {})[f"{card} GB"] = None if best is None else {
                "config": best["variant"], "s_per_image": best["s_per_image"], "peak_gib": best["peak_gib"]}
    return table


def markdown(rows: list[dict], extra: dict) -> str:
    cols = ("scenario", "variant", "s_per_image", "first_call_s", "speedup", "encode_ms", "dit_ms", "decode_ms", "peak_gib", "peak_reserved_gib", "resident_gib", "rel_l2_vs_bf16_default")
    lines = [f"Device: {extra.get('device')}, torch {extra.get('torch')}, {extra.get('steps')} steps, CFG 4, batch 1, seeded random weights.", "",
             "| " + " | ".join(cols) + " | emulated card |", "|" + "---|" * (len(cols) + 1)]
    for r in rows:
        cells = [f"{r[c]:.3f}" if isinstance(r.get(c), float) else str(r.get(c, "–")) for c in cols]
        em = r.get("emulated")
        cells.append("–" if em is None else f"{em['card_gb']} GB: {'fits' if em['ok'] else 'OOM'}")
        lines.append("| " + " | ".join(cells) + " |")
    for key in ("ladder", "attention_ops", "tiny_fp8", "weights_gib", "context_gib", "torchao_linears", "phase_s", "skipped", "errors"):
        if key in extra:
            lines.append(f"\n**{key}**: `{json.dumps(extra[key], default=str)}`")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--phases", default="attention,baseline,ladder,tiny_fp8")
    parser.add_argument("--configs", default="", help="comma-separated CONFIGS names (default: all)")
    parser.add_argument("--budget-s", type=float, default=420.0, help="start no new ladder configuration after this many seconds")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    Levers(args).run()
    print((args.out / "levers.md").read_text())


if __name__ == "__main__":
    main()
