"""Where the time of one image goes on the fastest inference path, and what each remaining lever gives.

The suite's fastest configuration ('fast, static-shape compile': fused q/k/v, regional static compile, CUDA graphs
over the DiT, precomputed adaLN modulations) leaves host and encoder time on the table. This script starts from that configuration and adds one lever at a time, each measured like the suite (5 timed calls
after a warm-up, encode / DiT / decode split by CUDA events) in one process on the same weights:

- `eager_encoder`: the suite's configuration with the encoder eager (`EncoderGraphRunner` off for this row only);
- `base`: the encoder's text model and bridge replayed as a CUDA graph (the pipeline's default now);
- `fused_gelu`: + the DiT MLPs' GEMM with a GELU epilogue (`FusedGELU`; the blocks recompiled);
- `vae_compiled`: + the VAE decoder compiled, shape-specialised (`enable_fast_path(compile_vae=True)`;
  `vae_compiled_dynamic`, optional: dynamic shapes);
- `encoder_compiled`: + the VLM decoder layers and connector layers compiled (`compile_encoder_blocks`), inside
  the encoder graph;
- `vision_varlen` (optional): the vision tower's windowed attention as one varlen flash-attention call per layer
  (`set_vision_varlen_attention`) instead of one SDPA call per window;
- `vision_compiled` (optional): each vision block compiled (dynamic shapes);
- `autotune` (optional): the blocks recompiled with inductor's `max-autotune-no-cudagraphs` (Triton GEMM templates with fused
  epilogues, benchmarked against cuBLAS per shape), the GELU unfused again so inductor may fuse it itself.

Each row carries the relative L2 of its final latents (and decoded pixels) against the first row's. `--profile` also
profiles one call of `base` and of the last configuration phase by phase (wall time, GPU busy time, kernel count,
and the largest idle gaps of the denoising loop), so the table says where the remaining time goes.

Usage (alone on a GPU): python benchmarks/latency.py --out DIR [--scenarios t2i_512_b1,...] [--profile]
Writes DIR/latency.json and DIR/latency.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from measure import (
    EDIT_PROMPT,
    T2I_PROMPT,
    StepCounter,
    benchmark_scenario,
    busy_and_gaps,
    gpu_events,
    pipe_default_negative,
    reference_images,
    rel_l2,
)
from real_size_smoke import real_size_components
from suite import SCENARIOS

from deepgen_core.acceleration import set_gelu_fusion, set_vision_varlen_attention
from deepgen_core.pipeline import DeepGenPipeline

logger = logging.getLogger("deepgen.bench.latency")
LEVERS = ("eager_encoder", "base", "fused_gelu", "vae_compiled", "encoder_compiled")
OPTIONAL_LEVERS = ("vision_varlen", "vision_compiled", "vae_compiled_dynamic", "autotune")


def profile_phases(pipe: DeepGenPipeline, scenario, steps: int) -> dict:
    """One image, each phase (encode, denoise, decode) under its own profiler after a synchronise: wall time and
    the GPU's busy time, kernel count and idle gaps in that phase."""
    prompt = EDIT_PROMPT if scenario.is_edit else T2I_PROMPT  # as `measure.generate`
    generator = torch.Generator().manual_seed(42)
    out, state = {}, {}
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]

    def encode():
        refs = pipe.prepare_reference_pixels(reference_images(scenario.n_refs), scenario.batch, "dynamic", 512) if scenario.is_edit else None
        state["embeddings"] = pipe.encode_prompt([prompt] * scenario.batch, [pipe_default_negative(scenario)] * scenario.batch, refs)
        state["latents"] = pipe.prepare_latents(scenario.batch, scenario.size, scenario.size, generator)
        state["refs"] = pipe.encode_reference_latents(refs, generator) if refs is not None else None

    def denoise():
        state["latents"] = pipe.denoise(state["latents"], state["embeddings"], state["refs"], steps, 4.0, callback_on_step_end=StepCounter())

    def decode():
        pipe.decode_latents(state["latents"])

    with torch.no_grad():
        for name, fn in (("encode", encode), ("denoise", denoise), ("decode", decode)):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            with torch.profiler.profile(activities=activities) as prof:
                t0 = time.perf_counter()
                fn()
                torch.cuda.synchronize()
                wall = time.perf_counter() - t0
            memory = {"allocated_before_gib": before / 2**30, "allocated_after_gib": torch.cuda.memory_allocated() / 2**30,
                      "peak_gib": torch.cuda.max_memory_allocated() / 2**30}
            out[name] = {"wall_ms": wall * 1e3, **memory, **busy_and_gaps(gpu_events(prof))}
    return out


class Latency:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rows: list[dict] = []
        self.extra: dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "errors": {}, "profiles": {}}
        self.reference: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        t0 = time.perf_counter()
        self.pipe = DeepGenPipeline.from_components(real_size_components("cuda", torch.bfloat16))
        self.pipe.set_offload("none", "cuda")
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 32)
        self.pipe.enable_fast_path(cuda_graphs=True, compile="regional", fuse_projections=True, compile_kwargs={"dynamic": False})
        self.extra["build_s"] = time.perf_counter() - t0

    def measure(self, lever: str) -> None:
        for scenario in self.args.scenarios:
            # 2 warm-ups: the encoder graph of a shape is captured on its second use
            row = benchmark_scenario(self.pipe, scenario, self.args.steps, self.args.runs, warmup=2)
            latents = row.pop("latents")
            with torch.no_grad():
                pixels = self.pipe.decode_latents(latents).float()
            if scenario.name not in self.reference:
                self.reference[scenario.name] = (latents, pixels)
            base_latents, base_pixels = self.reference[scenario.name]
            row.update(scenario=scenario.name, lever=lever, rel_l2_latents_vs_first=rel_l2(latents, base_latents), rel_l2_pixels_vs_first=rel_l2(pixels, base_pixels))
            torch.cuda.synchronize()
            row["allocated_at_rest_gib"] = torch.cuda.memory_allocated() / 2**30
            self.rows.append(row)
            logger.info("%s / %s: %.3f s/img (encode %.1f, DiT %.1f, decode %.1f ms), rel L2 %.4f", scenario.name, lever, row["s_per_image"], row["encode_ms"], row["dit_ms"], row["decode_ms"], row["rel_l2_latents_vs_first"])
            self.write()

    def profile(self, label: str) -> None:
        for scenario in self.args.scenarios:
            self.extra["profiles"][f"{scenario.name} / {label}"] = profile_phases(self.pipe, scenario, self.args.steps)
        self.write()

    def apply(self, lever: str) -> None:
        pipe = self.pipe
        if lever == "eager_encoder":
            pipe.encoder_core = lambda: None  # this row only: the encoder eager, as before EncoderGraphRunner
        elif lever == "base":
            pipe.__dict__.pop("encoder_core", None)
        elif lever == "fused_gelu":
            set_gelu_fusion(pipe.transformer, True)
            self.recompile()  # compiled blocks keep the MLP call they were traced with
        elif lever == "vae_compiled":
            pipe.enable_fast_path(cuda_graphs=True, compile_vae=True)
        elif lever == "vision_varlen":
            if not set_vision_varlen_attention(pipe.encoder):
                raise RuntimeError("torch.nn.attention.varlen is not available in this torch")
        elif lever == "vision_compiled":  # each vision block, dynamic shapes (after vision_varlen: no per-window split)
            for block in pipe.encoder.vlm.visual.blocks:
                block.compile(dynamic=True)
        elif lever == "vae_compiled_dynamic":
            pipe.vae.decoder.compile(dynamic=True)
        elif lever == "encoder_compiled":
            pipe.enable_fast_path(cuda_graphs=True, compile_encoder_blocks=True)  # drops the graphs: recaptured
        elif lever == "autotune":  # inductor's Triton GEMM templates (epilogue fusion) against cuBLAS, GELU left to inductor
            set_gelu_fusion(pipe.transformer, False)
            self.recompile(mode="max-autotune-no-cudagraphs")
        else:
            raise ValueError(lever)

    def recompile(self, **kwargs) -> None:
        torch._dynamo.reset()
        # What `compile_transformer(..., "regional")` does; called directly since its own `mode` names the region.
        self.pipe.transformer.compile_repeated_blocks(fullgraph=True, dynamic=False, **kwargs)
        self.pipe.release_cuda_graphs()

    def run(self) -> None:
        start = time.perf_counter()
        levers = self.args.levers.split(",")
        for lever in levers:
            if time.perf_counter() - start > self.args.budget_s:
                self.extra.setdefault("skipped", []).append(lever)
                continue
            try:
                self.apply(lever)
                self.measure(lever)
                if self.args.profile and lever in ("base", levers[-1]):
                    self.profile(lever)
            except Exception as exc:  # keep what was measured: a device call is scarce
                logger.exception("lever %s failed", lever)
                self.extra["errors"][lever] = f"{type(exc).__name__}: {exc}"[:2000]
        runner = self.pipe._encoder_graphs
        self.extra["encoder_capture_s"] = {str(k[0][0]): v for k, v in runner.capture_seconds.items()} if runner else {}
        self.extra["total_s"] = time.perf_counter() - start
        self.write()

    def write(self) -> None:
        out = self.args.out
        (out / "latency.json").write_text(json.dumps({"rows": self.rows, **self.extra}, indent=1, default=str))
        cols = ("scenario", "lever", "s_per_image", "min_s", "max_s", "encode_ms", "dit_ms", "decode_ms", "peak_gib", "allocated_at_rest_gib", "first_call_s", "rel_l2_latents_vs_first", "rel_l2_pixels_vs_first")
        lines = [f"{self.extra['device']}, torch {self.extra['torch']}, {self.args.steps} steps, CFG 4; each lever on top of the previous.", "",
                 "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for row in self.rows:
            lines.append("| " + " | ".join(f"{row[c]:.4g}" if isinstance(row.get(c), float) else str(row.get(c, "")) for c in cols) + " |")
        for name, phases in self.extra["profiles"].items():
            lines += ["", f"Profile {name}:", "", "| phase | wall ms | GPU busy ms | kernels | idle ms | gaps > 20 µs (ms) |", "|---|---|---|---|---|---|"]
            for phase, p in phases.items():
                lines.append(f"| {phase} | {p['wall_ms']:.1f} | {p.get('gpu_busy_ms', 0):.1f} | {p['kernels']} | {p.get('idle_ms', 0):.1f} | {p.get('gaps_over_20us', 0)} ({p.get('idle_in_gaps_over_20us_ms', 0):.1f}) |")
        (out / "latency.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--scenarios", default="t2i_512_b1")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--budget-s", type=float, default=420.0, help="start no new lever after this many seconds")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--levers", default=",".join(LEVERS), help=f"levers in order, from {LEVERS + OPTIONAL_LEVERS}")
    args = parser.parse_args()
    by_name = {s.name: s for s in SCENARIOS}
    args.scenarios = [by_name[s] for s in args.scenarios.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    Latency(args).run()


if __name__ == "__main__":
    main()
