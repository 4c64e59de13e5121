"""Real-size GPU benchmark suite: the fast path against a reference-maths baseline, side by side, one process.

Seeded random weights at the real sizes (Qwen2.5-VL-3B, SCB connector, SD3.5-M DiT, SD3 VAE, 128 think tokens)
built on the GPU. Phases (each skipped, and said so, once `--budget-s` is spent):

1. baseline: the reference's per-call dense attention mask with host syncs, eager, no graphs (`baseline.py`);
2. plain eager path and CUDA graphs only (no compile), to separate what graphs and compile each bring;
3. fast path: regional `torch.compile` + CUDA graphs over the DiT forward, every scenario;
4. stage-2 training step (micro-batch 4, checkpointing off/on) and an RL rollout group;
5. memory: offload 'model' and VAE tiling at 1024^2;
6. attention backends (diffusers dispatcher) and fp8 DiT weights.

Usage: python benchmarks/suite.py --out DIR [--quick] [--compile-cache FILE]; writes DIR/results.json and
DIR/results.md. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from baseline import use_reference_attention
from measure import Scenario, benchmark_scenario
from real_size_smoke import real_size_components
from report import attention_backends, write_reports
from training import rl_rollout, stage2_step

from deepgen_core.acceleration import load_compile_cache, save_compile_cache
from deepgen_core.pipeline import DeepGenPipeline

logger = logging.getLogger("deepgen.bench")
# Exception, not a list: torch._dynamo raises classes outside RuntimeError (FailOnRecompileLimitHit), and one
# failed phase must not lose the other phases of a scarce device run.
HARNESS_ERRORS = (Exception,)

SCENARIOS = [Scenario("t2i_512_b1", 512, 1), Scenario("edit_512_1ref", 512, 1, 1), Scenario("t2i_1024_b1", 1024, 1),
             Scenario("edit_512_2ref", 512, 1, 2), Scenario("t2i_512_b4", 512, 4), Scenario("t2i_1024_b4", 1024, 4)]
QUICK = ["t2i_512_b1", "edit_512_1ref"]


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.start = time.perf_counter()
        self.rows: list[dict] = []
        self.extra: dict = {"skipped": [], "errors": {}}
        self.baseline_latents: dict[str, torch.Tensor] = {}
        self.label = "CUDA graphs only"  # the DiT configuration of the memory rows; "fast" once compiled
        self.scenarios = [s for s in SCENARIOS if not args.quick or s.name in QUICK]
        t0 = time.perf_counter()
        self.pipe = DeepGenPipeline.from_components(real_size_components("cuda", torch.bfloat16))
        self.pipe.set_offload("none", "cuda")
        self.extra["build_s"] = time.perf_counter() - t0

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def phase(self, name: str, fn) -> None:
        if self.elapsed() > self.args.budget_s:
            self.extra["skipped"].append(name)
            logger.warning("skipping phase %s: %.0f s spent", name, self.elapsed())
            return
        t0 = time.perf_counter()
        try:
            fn()
        except HARNESS_ERRORS as exc:  # record and go on: one device call must yield every phase it can
            logger.exception("phase %s failed", name)
            self.extra["errors"][name] = f"{type(exc).__name__}: {exc}"[:2000]
        self.extra.setdefault("phase_s", {})[name] = time.perf_counter() - t0
        write_reports(self.args.out, self.rows, self.extra)

    def run(self, scenario: Scenario, variant: str, runs: int, warmup: int = 1, **info) -> dict:
        steps = self.args.steps
        row = benchmark_scenario(self.pipe, scenario, steps, runs, warmup, reference=self.baseline_latents.get(scenario.name))
        latents = row.pop("latents")
        if variant == "baseline":
            self.baseline_latents[scenario.name] = latents
        row.update(scenario=scenario.name, variant=variant, steps=steps, batch=scenario.batch, **info)
        self.rows.append(row)
        logger.info("%s / %s: %.3f s/img (first call %.2f s), peak %.2f GiB", scenario.name, variant, row["s_per_image"], row["first_call_s"] or 0, row["peak_gib"])
        return row

    # ------------------------------------------------------------------------------------------------ phases

    def baseline(self) -> None:
        use_reference_attention(self.pipe.transformer, True)
        self.pipe.enable_fast_path(cuda_graphs=False)
        try:
            for s in self.scenarios:
                large = s.batch > 1 or s.n_refs > 1
                if s.name == "t2i_1024_b4" and not self.args.baseline_all:
                    self.extra["skipped"].append("baseline t2i_1024_b4 (about 40 s of device time; --baseline-all runs it)")
                    continue
                self.run(s, "baseline", runs=1 if large else self.args.baseline_runs, warmup=0 if large else 1)
        finally:
            use_reference_attention(self.pipe.transformer, False)

    def eager_and_graphs(self) -> None:
        for name in ("t2i_512_b1", "t2i_1024_b1"):
            s = next(x for x in self.scenarios + SCENARIOS if x.name == name)
            if self.args.quick and name != "t2i_512_b1":
                continue
            if name == "t2i_512_b1":
                self.pipe.enable_fast_path(cuda_graphs=False)
                self.run(s, "eager (no mask, no graphs)", runs=3)
            self.pipe.enable_fast_path(cuda_graphs=True)
            self.run(s, "CUDA graphs only", runs=3)

    def fast(self) -> None:
        t0 = time.perf_counter()
        self.pipe.enable_fast_path(cuda_graphs=True, compile="regional", fuse_projections=True, fuse_gelu=True)
        self.label = "fast"  # + precomputed adaLN modulations (on by default)
        self.extra["compile_setup_s"] = time.perf_counter() - t0
        for s in self.scenarios:
            runs = 2 if s.name == "t2i_1024_b4" and not self.args.baseline_all else self.args.runs
            self.run(s, "fast: fused QKV + fused GELU + regional compile + CUDA graphs + precomputed modulations", runs=runs)
        runner = self.pipe._graph_runner
        self.extra["graph_capture_s"] = {str(k[0][0][0]): v for k, v in runner.capture_seconds.items()} if runner else {}

    def training(self) -> None:
        """The project's stage-2 step (`training.STAGE2_VARIANTS`: eager / compiled, checkpointing off / on, autocast,
        plus bf16 compiled) and an RL rollout group."""
        from training import DEFAULT_VARIANTS, STAGE2_VARIANTS

        # The training graphs of the DiT blocks join the fast path's inference graphs of the same code: raise dynamo's
        # per-code recompile limit (8, a hard error with fullgraph) for the phases after this one.
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        runs = 1 if self.args.quick else 5
        for name in DEFAULT_VARIANTS:  # the cudagraph variants segfaulted the process (training.py)
            kwargs = STAGE2_VARIANTS[name]
            if self.args.quick and kwargs["compile"]:
                continue
            try:
                self.extra[f"stage2_step_{name}"] = stage2_step(self.pipe, runs=runs, **kwargs)
            except HARNESS_ERRORS as exc:  # record and go on: the other variants and the rollout still run
                logger.exception("stage-2 variant %s failed", name)
                self.extra["errors"][f"stage2 {name}"] = f"{type(exc).__name__}: {exc}"[:2000]
            torch.cuda.empty_cache()
        self.extra["rl_rollout_group8_512"] = rl_rollout(self.pipe, steps=self.args.steps, runs=1 if self.args.quick else 5)

    def memory(self) -> None:
        s1024 = Scenario("t2i_1024_b1", 1024, 1)
        self.pipe.set_offload("model", "cuda")
        try:
            torch.cuda.empty_cache()
            self.run(s1024, f"{self.label} + offload model", runs=2 if self.args.quick else 3)
        finally:
            self.pipe.set_offload("none", "cuda")
        self.pipe.enable_vae_tiling(True)
        try:
            self.run(s1024, f"{self.label} + VAE tiling (512 px tiles)", runs=2)
        finally:
            self.pipe.enable_vae_tiling(False)

    def offload_probe(self) -> None:
        """Allocated / peak GPU memory after each step method under offload 'model' (1024^2, the current DiT
        configuration), and the live allocations by call site (torch's memory history) at each mark."""
        from measure import StepCounter, live_allocations, pipe_default_negative

        pipe, probe = self.pipe, {}
        pipe.set_offload("model", "cuda")
        torch.cuda.memory._record_memory_history(max_entries=100_000)

        def mark(name: str) -> None:
            torch.cuda.synchronize()
            probe[name] = {"allocated_gib": torch.cuda.memory_allocated() / 2**30, "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
                           "live_by_site_gib": live_allocations()}
            torch.cuda.reset_peak_memory_stats()

        try:
            for run in range(2):
                torch.cuda.reset_peak_memory_stats()
                with torch.no_grad():
                    emb = pipe.encode_prompt(["a red fox"], [pipe_default_negative(Scenario("x", 1024, 1))])
                    mark(f"{run}: encode")
                    lat = pipe.prepare_latents(1, 1024, 1024, torch.Generator().manual_seed(0))
                    lat = pipe.denoise(lat, emb, None, self.args.steps, 4.0, callback_on_step_end=StepCounter())
                    mark(f"{run}: denoise")
                    pipe.decode_latents(lat)
                    mark(f"{run}: decode")
        finally:
            torch.cuda.memory._record_memory_history(enabled=None)
            pipe.set_offload("none", "cuda")
        self.extra[f"offload_model_probe_1024 ({self.label})"] = probe

    def fast_variants(self) -> None:
        """What each part of the fast path brings (after `fast`, whose compile and fusion stay in place):
        without the precomputed modulations, then with shape-specialised (static) compilation."""
        first = [s for s in self.scenarios if s.name in ("t2i_512_b1", "edit_512_1ref", "t2i_1024_b1")]
        self.pipe.enable_fast_path(cuda_graphs=True, precompute_modulation=False)
        for s in first:
            self.run(s, "fast without precomputed modulations", runs=self.args.runs)
        t0 = time.perf_counter()
        torch._dynamo.reset()  # drop the dynamic graphs: the static ones compile per block kind and shape
        # 3 block kinds x 3 shapes; a benchmark may raise it, the library never does (never lowered: see training)
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 32)
        self.pipe.enable_fast_path(cuda_graphs=True, compile="regional", compile_kwargs={"dynamic": False})
        self.extra["compile_static_setup_s"] = time.perf_counter() - t0
        for s in first:
            self.run(s, "fast, static-shape compile (one compile per shape)", runs=self.args.runs)

    def backends(self) -> None:
        self.extra["attention_ops"] = attention_backends(self.pipe.transformer.config)
        s = self.scenarios[0]
        with torch.compiler.set_stance("force_eager"):
            for backend in ("_native_cudnn", "_native_flash", "_native_efficient", "native"):
                try:
                    self.pipe.enable_fast_path(cuda_graphs=True, attention_backend=backend)
                    self.run(s, f"CUDA graphs only, attention {backend}", runs=3, backend=backend)
                except HARNESS_ERRORS as exc:
                    self.extra["errors"][f"backend {backend}"] = f"{type(exc).__name__}: {exc}"[:500]
        self.pipe.transformer.reset_attention_backend()
        self.pipe.enable_fast_path(cuda_graphs=True)

    def fp8(self) -> None:
        self.pipe.enable_fast_path(cuda_graphs=True, fp8=True)
        self.extra["dit_gib_after_fp8"] = sum(t.numel() * t.element_size() for t in [*self.pipe.transformer.parameters(), *self.pipe.transformer.buffers()]) / 2**30
        for s in self.scenarios[:3]:
            self.run(s, "fast + fp8 DiT weights", runs=self.args.runs)


def main() -> None:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="smoke: 2 scenarios, few runs (use with --steps 3)")
    parser.add_argument("--budget-s", type=float, default=470.0, help="start no new phase after this many seconds")
    parser.add_argument("--compile-cache", type=Path, default=None, help="load (if present) and save torch compile artefacts here")
    parser.add_argument("--phases", default="baseline,eager_and_graphs,backends,fast,offload_probe,memory,fast_variants,training", help="fp8 is also available")
    parser.add_argument("--baseline-runs", type=int, default=3)
    parser.add_argument("--baseline-all", action="store_true", help="also run the 40 s baseline of t2i_1024_b4 (and 5 fast runs of it)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    cache_loaded = bool(args.compile_cache) and load_compile_cache(args.compile_cache)
    bench = Bench(args)
    bench.extra.update(device=torch.cuda.get_device_name(), torch=torch.__version__, steps=args.steps, compile_cache_loaded=cache_loaded,
                       params={n: sum(p.numel() for p in m.parameters()) for n, m in (("vlm", bench.pipe.encoder.vlm), ("bridge", bench.pipe.encoder.bridge), ("dit", bench.pipe.transformer), ("vae", bench.pipe.vae))})
    for name in args.phases.split(","):
        bench.phase(name, getattr(bench, name))
    if args.compile_cache:
        bench.extra["compile_cache_bytes"] = save_compile_cache(args.out / args.compile_cache.name)
    bench.extra["total_s"] = bench.elapsed()
    write_reports(args.out, bench.rows, bench.extra)
    print((args.out / "results.md").read_text())


if __name__ == "__main__":
    main()
