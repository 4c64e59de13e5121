"""Training-side scenarios of the benchmark: the project's stage-2 SFT step and an RL rollout.

`stage2_step` times the step of `deepgen_core.train` at real size: a `DeepGenTrainModel` over the pipeline's
modules with stage 2 applied by `setup_stage` (think tokens, SCB bridge and the whole DiT trainable, the VLM
LoRA of the stage defaults attached: r 64 on embed_tokens and text layers 0-34), a cached-latent batch (what
`data.cache_latents` feeds: posterior mean/std instead of pixels, so no VAE in the step), `draw_step_noise`,
`model(batch, noise)["loss"]`, backward, clip 1.0, the project's fused AdamW (`build_optimizer`), as
`Trainer._optimizer_step` does without accelerate. Optional: gradient checkpointing, `compile_for_training`.

Precision: "autocast" is the trainer's bf16 mode (fp32 master weights of everything that trains, AdamW states
fp32, the forward under bf16 autocast); the frozen VLM base weights stay bf16 here (the trainer keeps them fp32:
7.5 GB more and a cast per use, the same FLOPs), so that it fits one 80 GB GPU without ZeRO. "bf16" trains bf16
weights with bf16 AdamW states (the old benchmark's setting). The learning rate is 0, so every weight keeps its
value (AdamW still does all its arithmetic) and the pipeline is handed back as it came (dtypes, requires_grad and
train/eval flags, compile state, fused projections; LoRA removed; CUDA graphs dropped, recaptured on use).

Alone on a GPU: python benchmarks/training.py --out DIR [--variants a,b] [--runs 5] [--budget-s 420]; writes
DIR/training.json and DIR/training.md after every variant. Each precision compiles once (its first compiled
variant's first call; the checkpointing variant reuses the graphs), so expect several minutes in all.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from measure import PEAK_TFLOPS, StepCounter, busy_and_gaps, dit_forward_flops, gpu_events, image_tokens, timed

from deepgen_core.acceleration import (
    FP8Linear,
    compile_encoder_for_training,
    compile_transformer,
    fuse_qkv,
    unfuse_qkv,
)
from deepgen_core.train.config import OptimConfig, build_config
from deepgen_core.train.graphs import disable_training_graphs, enable_training_graphs
from deepgen_core.train.modeling import (
    DeepGenTrainModel,
    compile_for_training,
    detach_lora,
    draw_step_noise,
    enable_gradient_checkpointing,
)
from deepgen_core.train.optim import build_optimizer
from deepgen_core.train.stages import setup_stage

logger = logging.getLogger("deepgen.bench.training")
PROMPT = "a red fox reading a newspaper on a park bench, morning light"
STAGE2_VARIANTS = {
    "eager_ckpt_off": {"checkpointing": False, "compile": False},
    "eager_ckpt_on": {"checkpointing": True, "compile": False},
    "compiled_ckpt_off": {"checkpointing": False, "compile": True},
    "compiled_ckpt_on": {"checkpointing": True, "compile": True},
    "bf16_compiled_ckpt_off": {"checkpointing": False, "compile": True, "precision": "bf16"},
    # torch.compile's mode "reduce-overhead": each compiled region also replays as a CUDA graph (cudagraph trees).
    # Opt-in (not in DEFAULT_VARIANTS): on the H100 with torch 2.11+cu130 the process segfaulted in its first step
    # (benchmarks/results/2026-11-23-h100-compile-toggle-fp8/training_cudagraphs_segfault.txt).
    # `train.graphs` (`model.cuda_graphs`): the DiT call and the encoder core replayed as CUDA graphs (forward and
    # backward), eager or compiled inside (compiled: the trainer's capturable set, DiT blocks and VLM MLPs and
    # norms); autocast runs without its weight-cast cache (make_graphed_callables' requirement).
    "graphed_ckpt_off": {"checkpointing": False, "compile": False, "graphs": True},
    "compiled_graphed_ckpt_off": {"checkpointing": False, "compile": True, "graphs": True},
    "bf16_graphed_ckpt_off": {"checkpointing": False, "compile": False, "graphs": True, "precision": "bf16"},
    "bf16_compiled_graphed_ckpt_off": {"checkpointing": False, "compile": True, "graphs": True, "precision": "bf16"},
    # Only the DiT blocks compiled (regional), the VLM eager, both regions graphed.
    "bf16_dit_compiled_graphed_ckpt_off": {"checkpointing": False, "compile": "dit", "graphs": True, "precision": "bf16"},
    "dit_compiled_graphed_ckpt_off": {"checkpointing": False, "compile": "dit", "graphs": True},
    "compiled_cudagraphs_ckpt_off": {"checkpointing": False, "compile": True, "cudagraphs": True},
    "bf16_compiled_cudagraphs_ckpt_off": {"checkpointing": False, "compile": True, "cudagraphs": True, "precision": "bf16"},
}
# Without the segfaulting cudagraph variants and the DiT-only compile ablations.
DEFAULT_VARIANTS = [n for n, v in STAGE2_VARIANTS.items() if not v.get("cudagraphs") and v.get("compile") != "dit"]


def stage2_flops(model: DeepGenTrainModel, micro_batch: int, size: int, n_txt: int) -> float:
    """Model FLOPs of one stage-2 step (forward + backward), per micro-batch.

    Counted: the DiT 3x its forward (anchors.md §6.3: linear layers and joint/dual attention over the image
    tokens of `size` and the `n_txt` context tokens); the VLM text layers 4 P n (forward, and backward to the
    inputs only: the base weights are frozen; P without the embedding table); the LoRA linears 6 P n (forward,
    input and weight gradients); the SCB bridge 6 P n. Not counted: the VLM's attention scores (n ~ 100-200),
    elementwise work, the optimizer, and the recomputation of gradient checkpointing (model FLOPs, not
    hardware FLOPs), so MFU with checkpointing is lower by the recomputation's share.
    """
    encoder = model.encoder
    lm = encoder.vlm.language_model
    lora = sum(p.numel() for n, p in lm.named_parameters() if "lora_" in n and "embed_tokens" not in n)
    vlm = sum(p.numel() for n, p in lm.named_parameters() if "lora_" not in n) - lm.embed_tokens.weight.numel()
    bridge = sum(p.numel() for p in encoder.bridge.parameters())
    dit = 3 * dit_forward_flops(model.transformer.config, image_tokens(size, 0), n_txt)
    return micro_batch * (dit + (4 * vlm + 6 * lora + 6 * bridge) * n_txt)


def _cached_batch(model: DeepGenTrainModel, micro_batch: int, size: int) -> dict:
    """A text-to-image micro-batch as the latent cache yields it: bf16 posterior mean/std (encoded under autocast)."""
    vae, device = model.vae.config, model.transformer.device
    shape = (vae.latent_channels, size // 8, size // 8)
    generator = torch.Generator(device=device).manual_seed(0)
    mean = [torch.randn(shape, device=device, generator=generator).to(torch.bfloat16) for _ in range(micro_batch)]
    std = [torch.rand(shape, device=device, generator=generator).mul(0.1).to(torch.bfloat16) for _ in range(micro_batch)]
    return {"texts": [PROMPT] * micro_batch, "latent_mean": mean, "latent_std": std, "task": "text2image"}


class _Stage2Model:
    """The stage-2 train model over `pipe`'s own modules (`build`), and the pipe handed back unchanged (`restore`)."""

    def __init__(self, pipe) -> None:
        dit = pipe.transformer
        if any(isinstance(m, FP8Linear) for m in dit.modules()):
            raise ValueError("the DiT holds fp8 weights (the fp8 phase): the training step needs the bf16 DiT.")
        self.pipe, self.checkpointing, self.trainable, self.compiled = pipe, False, {}, {}
        self.fused = any(getattr(m, "fused_projections", False) for m in dit.modules())
        if self.fused:
            unfuse_qkv(dit)  # training must see the separate q/k/v weights (fuse_qkv's note)
        pipe.release_cuda_graphs()
        parts = (pipe.encoder, dit, pipe.vae)
        self.modes = {m: m.training for part in parts for m in part.modules()}
        self.params = {p: (p.dtype, p.requires_grad) for part in parts for p in part.parameters()}
        self.compiled_before = {m: m._compiled_call_impl for m in self.modes if m._compiled_call_impl is not None}
        for m in self.compiled_before:
            m._compiled_call_impl = None  # eager unless this variant compiles

    def build(self, precision: str, checkpointing: bool, compile: bool | str, cudagraphs: bool = False, graphs: bool = False) -> DeepGenTrainModel:
        torch.manual_seed(0)  # LoRA init
        model = DeepGenTrainModel(self.pipe.components())
        self.trainable = setup_stage(model, build_config("sft"))
        master = torch.float32 if precision == "autocast" else torch.bfloat16
        for p in model.parameters():
            if p.requires_grad:
                p.data = p.data.to(master)
        if checkpointing:
            self.checkpointing = True
            enable_gradient_checkpointing(model)
        if compile and cudagraphs:  # compile_for_training's regions, in torch.compile's mode "reduce-overhead"
            model.transformer.compile_repeated_blocks(fullgraph=True, dynamic=True, mode="reduce-overhead")
            self.compiled = {"transformer_blocks": len(model.transformer.transformer_blocks),
                             **compile_encoder_for_training(model.encoder, mode="reduce-overhead")}
        elif compile == "dit":
            compile_transformer(model.transformer, "regional")
            self.compiled = {"transformer_blocks": len(model.transformer.transformer_blocks)}
        elif compile:  # with graphs, what the trainer compiles under model.cuda_graphs (no VLM attention, no connector)
            self.compiled = compile_for_training(model, capturable=graphs)
        if graphs:
            enable_training_graphs(model)
        return model.train()

    def restore(self) -> None:
        pipe = self.pipe
        if self.checkpointing:
            pipe.transformer.disable_gradient_checkpointing()
            pipe.encoder.vlm.gradient_checkpointing_disable()
        pipe.encoder.__dict__.pop("core_call", None)  # train.graphs' hook, if the variant installed it
        detach_lora(pipe.encoder.vlm)
        for m, training in self.modes.items():
            m._compiled_call_impl = self.compiled_before.get(m)
            m.training = training
        for p, (dtype, requires_grad) in self.params.items():
            p.grad = None
            p.data = p.data.to(dtype)
            p.requires_grad_(requires_grad)
        if self.fused:
            fuse_qkv(pipe.transformer)
        pipe.release_cuda_graphs()


def stage2_step(pipe, micro_batch: int = 4, size: int = 512, checkpointing: bool = False, compile: bool | str = False,
                precision: str = "autocast", runs: int = 5, profile: bool = False, cudagraphs: bool = False, graphs: bool = False) -> dict:
    """Samples/s and model-FLOP utilisation of the project's stage-2 step (see the module docstring).

    Args:
        pipe: a real-size bf16 `DeepGenPipeline` on CUDA (handed back unchanged).
        micro_batch, size: samples per step and their side (text-to-image, one prompt repeated).
        checkpointing: gradient checkpointing of the DiT and VLM layers.
        compile: `compile_for_training` (inductor, regional, dynamic); "dit": the DiT blocks only. The first call compiles.
        cudagraphs: with `compile`, torch.compile's mode "reduce-overhead" (each region replays as a CUDA graph).
        graphs: `train.graphs.enable_training_graphs` (the DiT call and the encoder core as CUDA graphs).
        precision: "autocast" (fp32 master weights, bf16 autocast) or "bf16" (bf16 weights and AdamW states).
        runs: timed steps after 2 warm-up steps.
        profile: also profile one more step (`profile_step`: GPU busy time, top kernels and host ops).
    """
    if precision not in ("autocast", "bf16"):
        raise ValueError(f"precision must be 'autocast' or 'bf16', got {precision!r}.")
    state = _Stage2Model(pipe)
    try:
        model = state.build(precision, checkpointing, compile, cudagraphs, graphs)
        row = _time_steps(model, micro_batch, size, precision == "autocast", compile, runs, profile, cudagraphs, graphs)
        row.update(trainable=state.trainable, compiled=state.compiled)
        if graphs:
            row.update(graph_capture_s=model.graphs.capture_seconds)
        del model
    finally:
        state.restore()
        del state
        gc.collect()
        torch.cuda.empty_cache()
    row.update(precision=precision, checkpointing=checkpointing, compile=compile, cudagraphs=cudagraphs, graphs=graphs)
    return row


def _time_steps(model: DeepGenTrainModel, micro_batch: int, size: int, use_autocast: bool, compile: bool, runs: int, profile: bool = False,
                cudagraphs: bool = False, graphs: bool = False) -> dict:
    """2 warm-up steps (the first compiles), then `runs` timed steps (each synchronised), as `Trainer._optimizer_step`."""
    batch = _cached_batch(model, micro_batch, size)
    device_type = model.transformer.device.type
    # Graphed regions need autocast without its weight-cast cache (each use casts, inside the graph).
    autocast = (lambda: torch.autocast(device_type, torch.bfloat16, cache_enabled=not graphs)) if use_autocast else contextlib.nullcontext
    with torch.no_grad(), autocast(), torch.compiler.set_stance("force_eager"):
        n_txt = model.pipeline().encode_prompt(batch["texts"], [], None, max_text_length=model.max_text_length).prompt_embeds.shape[1]
    flops = stage2_flops(model, micro_batch, size, n_txt)
    optimizer = build_optimizer(model, OptimConfig(lr=0.0))  # fused AdamW; lr 0 keeps the weights (module docstring)
    params = [p for p in model.parameters() if p.requires_grad]
    losses, counter, marks = [], iter(range(10**9)), []

    def step() -> None:
        index = next(counter)
        events = [torch.cuda.Event(enable_timing=True) for _ in range(3)]
        events[0].record()
        if cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()  # the previous step's graph outputs may be overwritten now
        noise = draw_step_noise(model, batch, torch.Generator().manual_seed(index))
        torch.manual_seed(index)  # LoRA dropout, seeded per micro-batch as the trainer does
        with autocast():
            loss = model(batch, noise)["loss"]
        loss.backward()
        events[1].record()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        events[2].record()
        losses.append(loss.detach())
        marks.append(events)

    torch.cuda.reset_peak_memory_stats()
    # The suite's pipe may already hold the inference fast path's DiT graphs: room for those and the training ones.
    with torch.compiler.set_stance("default" if compile else "force_eager"), torch._dynamo.config.patch(recompile_limit=32):
        times, first = timed(step, runs, warmup=2)
        profiled = profile_step(step) if profile else None
    median = statistics.median(times)
    # Forward + backward alone (CUDA events, the timed steps): what a step costs when gradient accumulation and
    # ZeRO sharding spread the optimizer (the sft recipe: accumulation 3 over 64 GPUs); clip + AdamW the rest.
    timed_marks = marks[2 : 2 + runs]
    fwd_bwd = statistics.median(a.elapsed_time(b) / 1e3 for a, b, _ in timed_marks)
    optim = statistics.median(b.elapsed_time(c) / 1e3 for _, b, c in timed_marks)
    extra = {"profile": profiled} if profiled else {}
    return {**extra, "s_per_step": median, "fwd_bwd_s": fwd_bwd, "optimizer_s": optim,
            "fwd_bwd_mfu_pct": 100 * flops / fwd_bwd / (PEAK_TFLOPS * 1e12), "min_s": min(times), "max_s": max(times), "runs": runs, "first_call_s": first,
            "samples_per_s": micro_batch / median, "tflops": flops / median / 1e12, "mfu_pct": 100 * flops / median / (PEAK_TFLOPS * 1e12),
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30, "n_txt": n_txt, "tflop_per_step": flops / 1e12,
            "losses_finite": all(math.isfinite(float(v)) for v in losses)}


def graphs_parity(pipe, micro_batch: int = 4, size: int = 512, precision: str = "bf16", compile: bool | str = False) -> dict:
    """One stage-2 forward and backward with `train.graphs` against the plain step, same weights, batch and noise
    (LoRA dropout off: graphed and eager dropout draw different masks). Returns the loss of each, the relative L2
    of the DiT and LoRA gradients, and the largest relative difference of any parameter's gradient."""
    state = _Stage2Model(pipe)
    try:
        model = state.build(precision, False, compile, graphs=True)  # with graphs' capturable compile; plain first:
        disable_training_graphs(model)
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        batch = _cached_batch(model, micro_batch, size)
        autocast = (lambda: torch.autocast("cuda", torch.bfloat16, cache_enabled=False)) if precision == "autocast" else contextlib.nullcontext
        params = {n: p for n, p in model.named_parameters() if p.requires_grad}

        def run() -> tuple[float, dict]:
            noise = draw_step_noise(model, batch, torch.Generator().manual_seed(0))
            with autocast():
                loss = model(batch, noise)["loss"]
            loss.backward()
            grads = {n: p.grad.detach().float().clone() for n, p in params.items() if p.grad is not None}
            model.zero_grad(set_to_none=True)
            return float(loss), grads

        plain_loss, plain = run()
        _, plain2 = run()  # the plain step's own run-to-run spread (atomics in attention backward kernels)
        graphs = enable_training_graphs(model)
        run()  # captures
        graphed_loss, graphed = run()
        disable_training_graphs(model)

        def rel(names, other) -> float:
            num = sum(float((other[n] - plain[n]).pow(2).sum()) for n in names)
            return math.sqrt(num / max(sum(float(plain[n].pow(2).sum()) for n in names), 1e-30))

        groups = {"dit": [n for n in plain if n.startswith("transformer.")], "lora": [n for n in plain if "lora_" in n]}
        groups["other"] = [n for n in plain if n not in groups["dit"] and n not in groups["lora"]]
        worst = max(plain, key=lambda n: rel([n], graphed))
        row = {"plain_loss": plain_loss, "graphed_loss": graphed_loss, "captures": graphs.captures,
               "same_grad_names": sorted(plain) == sorted(graphed), "n_grads": len(plain),
               **{f"{g}_grad_rel_l2": rel(names, graphed) for g, names in groups.items()},
               "plain_rerun_rel_l2": {g: rel(names, plain2) for g, names in groups.items()},
               "worst_param": worst, "worst_rel": rel([worst], graphed)}
    finally:
        state.restore()
        del state
        gc.collect()
        torch.cuda.empty_cache()
    return row


def profile_step(step, top: int = 15) -> dict:
    """One step under torch.profiler: wall time, summed GPU kernel time (busy), the top kernels by GPU time, the
    top host ops by self CPU time (where an under-used GPU waits) and the GPU timeline (`measure.busy_and_gaps`:
    kernel time by kind, i.e. GEMM / attention / Triton / optimizer / eager element-wise / copies, and idle gaps)."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as prof:
        start = time.perf_counter()
        step()
        sync()
        wall = time.perf_counter() - start
    events = prof.key_averages()
    kernels = sorted((e for e in events if e.device_time_total > 0 and e.device_type == torch.autograd.DeviceType.CUDA),
                     key=lambda e: e.device_time_total, reverse=True)
    host = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)
    busy = sum(e.device_time_total for e in kernels) / 1e6
    return {"wall_s": wall, "gpu_busy_s": busy, "kernel_launches": sum(e.count for e in kernels), "timeline": busy_and_gaps(gpu_events(prof)),
            "top_kernels": [{"name": e.key[:100], "ms": e.device_time_total / 1e3, "calls": e.count} for e in kernels[:top]],
            "top_host_ops": [{"name": e.key[:100], "self_cpu_ms": e.self_cpu_time_total / 1e3, "calls": e.count} for e in host[:top]]}


def rl_rollout(pipe, group: int = 8, size: int = 512, steps: int = 50, runs: int = 5) -> dict:
    """One GRPO-style rollout group: one prompt, `group` images from the same initial noise, no CFG, the whole
    trajectory recorded on the GPU through the per-step callback, then decoded."""
    trajectory = torch.empty(steps + 1, group, 16, size // 8, size // 8, device="cuda", dtype=pipe.dtype)
    counter = StepCounter()

    def record(p, i, t, tensors):
        counter(p, i, t, tensors)
        trajectory[i + 1].copy_(tensors["latents"])

    def rollout() -> None:
        with torch.no_grad():
            embeddings = pipe.encode_prompt(["a red fox reading a newspaper on a park bench"] * group, [])
            latents = pipe.prepare_latents(1, size, size, torch.Generator().manual_seed(0)).expand(group, -1, -1, -1).contiguous()
            trajectory[0].copy_(latents)
            final = pipe.denoise(latents, embeddings, None, steps, 1.0, callback_on_step_end=record)
            pipe.decode_latents(final)

    torch.cuda.reset_peak_memory_stats()
    times, first = timed(rollout, runs, warmup=1)
    median = statistics.median(times)
    return {"s_per_rollout": median, "min_s": min(times), "max_s": max(times), "runs": runs, "first_call_s": first,
            "images_per_s": group / median, "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
            "callback_calls_ok": counter.calls == steps * (runs + 1)}


# ------------------------------------------------------------------------------------------------ standalone run

COLUMNS = (("variant", "{}"), ("s_per_step", "{:.3f}"), ("min_s", "{:.3f}"), ("max_s", "{:.3f}"), ("first_call_s", "{:.1f}"),
           ("samples_per_s", "{:.2f}"), ("tflops", "{:.0f}"), ("mfu_pct", "{:.1f}"), ("fwd_bwd_s", "{:.3f}"), ("optimizer_s", "{:.3f}"),
           ("fwd_bwd_mfu_pct", "{:.1f}"), ("peak_gib", "{:.1f}"))


def markdown(results: dict) -> str:
    """The variants as a markdown table, then the run's facts."""
    n_txt = next(iter(results["variants"].values()), {}).get("n_txt")
    lines = [(f"Stage-2 step, {results['device']}, torch {results['torch']}, micro-batch {results['micro_batch']}, "
              f"{results['size']}^2, n_txt {n_txt}, real sizes, random weights."), "",
             "| " + " | ".join(c for c, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for name, row in results["variants"].items():
        lines.append("| " + " | ".join(fmt.format(name if key == "variant" else row[key]) for key, fmt in COLUMNS) + " |")
    for key in ("build_s", "compile_cache_loaded", "skipped", "errors", "total_s"):
        lines.append(f"\n{key}: {json.dumps(results.get(key), default=str)}")
    return "\n".join(lines) + "\n"


def _write(out: Path, results: dict) -> None:
    (out / "training.json").write_text(json.dumps(results, indent=1, default=str))
    (out / "training.md").write_text(markdown(results))


def main() -> None:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for training.json and training.md")
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS), help=f"comma list of {list(STAGE2_VARIANTS)} (default: those without cudagraphs)")
    parser.add_argument("--runs", type=int, default=5, help="timed steps per variant (after 2 warm-up steps)")
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--budget-s", type=float, default=420.0, help="start no new variant after this many seconds")
    parser.add_argument("--compile-cache", type=Path, default=None, help="load (if present) and save torch compile artefacts here")
    parser.add_argument("--profile", action="store_true", help="also profile one step per variant (GPU busy time, top kernels and host ops)")
    parser.add_argument("--parity", default="", help="comma list of precision[:compiled|:dit] (e.g. bf16,autocast:compiled): first compare one "
                        "step with train.graphs against the plain step (graphs_parity)")
    args = parser.parse_args()
    names = [n for n in args.variants.split(",") if n]
    if unknown := sorted(set(names) - set(STAGE2_VARIANTS)):
        parser.error(f"unknown variants {unknown}; choose from {list(STAGE2_VARIANTS)}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from real_size_smoke import real_size_components

    from deepgen_core.acceleration import load_compile_cache, save_compile_cache
    from deepgen_core.pipeline import DeepGenPipeline

    start = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    cache_loaded = bool(args.compile_cache) and load_compile_cache(args.compile_cache)
    pipe = DeepGenPipeline.from_components(real_size_components("cuda", torch.bfloat16))
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "micro_batch": args.micro_batch, "size": args.size,
               "build_s": time.perf_counter() - start, "compile_cache_loaded": cache_loaded, "variants": {}, "skipped": [], "errors": {}}
    for spec in [p for p in args.parity.split(",") if p]:
        precision, _, compiled = spec.partition(":")
        try:
            compile_mode = {"": False, "compiled": True, "dit": "dit"}[compiled]
            results.setdefault("graphs_parity", {})[spec] = row = graphs_parity(pipe, args.micro_batch, args.size, precision, compile_mode)
            logger.info("graphs parity %s: %s", spec, row)
        except Exception as exc:
            logger.exception("graphs parity %s failed", spec)
            results["errors"][f"parity {spec}"] = f"{type(exc).__name__}: {exc}"[:2000]
        _write(args.out, results)
    for name in names:
        if time.perf_counter() - start > args.budget_s:
            results["skipped"].append(name)
            continue
        try:
            results["variants"][name] = row = stage2_step(pipe, args.micro_batch, args.size, runs=args.runs, profile=args.profile, **STAGE2_VARIANTS[name])
            logger.info("%s: %.3f s/step, first call %.1f s, MFU %.1f%%, peak %.1f GiB", name, row["s_per_step"], row["first_call_s"], row["mfu_pct"], row["peak_gib"])
        # Exception, not a list: dynamo and inductor raise classes outside RuntimeError, and one failed variant must
        # not lose the others of a scarce device run.
        except Exception as exc:
            logger.exception("variant %s failed", name)
            results["errors"][name] = f"{type(exc).__name__}: {exc}"[:2000]
        results["total_s"] = time.perf_counter() - start
        _write(args.out, results)
    if args.compile_cache:
        results["compile_cache_bytes"] = save_compile_cache(args.out / args.compile_cache.name)
    results["total_s"] = time.perf_counter() - start
    _write(args.out, results)
    print(markdown(results))


if __name__ == "__main__":
    main()
