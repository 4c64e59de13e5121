"""Fast path against plain path against fp32, over whole 50-step trajectories (GPU, real size, random weights).

The suite once found the fast path's final edit latents 0.12 (relative L2) from the reference-maths baseline, against
0.012 for text-to-image, while one DiT forward of either path is as close to fp32 as the other. This settles whether
that is the fast path or bf16 itself: every variant renders the same seeded edit (1 reference) and text-to-image at
512², and each final latent is compared with an fp32 run of the same weights (built from the same seed in fp32 and
rounded to bf16 for the others), and with each other:

    python3 benchmarks/probes/edit_parity.py --out DIR [--steps 50]

Variants: `baseline` (reference maths: dense mask per call, `baseline.py`), `plain` (eager, no graphs), `graphs`
(CUDA graphs), `fast` (fused q/k/v + regional compile + graphs), `fp32` (plain, fp32 weights and activations).
Writes DIR/edit_parity.json. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parents[1]))

from baseline import use_reference_attention
from measure import Scenario, generate, rel_l2
from real_size_smoke import real_size_components

from deepgen_core.pipeline import DeepGenPipeline

SCENARIOS = [Scenario("t2i_512_b1", 512, 1), Scenario("edit_512_1ref", 512, 1, 1)]


def render_all(pipe: DeepGenPipeline, steps: int) -> dict[str, torch.Tensor]:
    return {s.name: generate(pipe, s, steps, seed=42)[1].float().cpu() for s in SCENARIOS}


def main() -> None:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    latents: dict[str, dict[str, torch.Tensor]] = {}

    torch.backends.cudnn.allow_tf32 = False  # the fp32 run is fp32 throughout (the VAE's convolutions too)
    pipe = DeepGenPipeline.from_components(real_size_components("cuda", torch.float32))
    pipe.set_offload("none", "cuda")
    pipe.enable_fast_path(cuda_graphs=False)
    latents["fp32"] = render_all(pipe, args.steps)
    del pipe
    gc.collect()
    torch.cuda.empty_cache()

    torch.backends.cudnn.allow_tf32 = True
    pipe = DeepGenPipeline.from_components(real_size_components("cuda", torch.bfloat16))
    pipe.set_offload("none", "cuda")
    use_reference_attention(pipe.transformer, True)
    pipe.enable_fast_path(cuda_graphs=False)
    latents["baseline"] = render_all(pipe, args.steps)
    use_reference_attention(pipe.transformer, False)
    latents["plain"] = render_all(pipe, args.steps)
    pipe.enable_fast_path(cuda_graphs=True)
    latents["graphs"] = render_all(pipe, args.steps)
    pipe.enable_fast_path(cuda_graphs=True, compile="regional", fuse_projections=True)
    latents["fast"] = render_all(pipe, args.steps)

    pairs = [("baseline", "fp32"), ("plain", "fp32"), ("graphs", "fp32"), ("fast", "fp32"), ("plain", "baseline"),
             ("graphs", "plain"), ("fast", "plain"), ("fast", "baseline")]
    result = {"steps": args.steps, "device": torch.cuda.get_device_name(), "seconds": round(time.perf_counter() - t0, 1),
              "rel_l2": {s.name: {f"{a} vs {b}": rel_l2(latents[a][s.name], latents[b][s.name]) for a, b in pairs} for s in SCENARIOS}}
    (out / "edit_parity.json").write_text(json.dumps(result, indent=1))
    for name, row in result["rel_l2"].items():
        print(name, json.dumps({k: round(v, 4) for k, v in row.items()}), flush=True)


if __name__ == "__main__":
    main()
