"""What a ComfyUI user of DeepGen Torch Compile pays, and when (GPU, real size, random weights).

The node's model copy and the plain model share one DiT; each sampling run installs the compiled blocks or takes
them out (`acceleration.set_block_compile`), and CUDA graphs are recaptured after a switch. This runs that sequence
through the pipeline the nodes use (bf16, CUDA graphs, no q/k/v fusion, as in ComfyUI) and times every run:

    python3 benchmarks/compile_toggle.py --out DIR [--steps 50]

plain 512² (x3) -> compiled 512² (first: the compile) x3 -> plain again -> compiled again -> compiled 1024² (dynamic:
no new compile) -> compiled 512² after it. Records each run's seconds, dynamo's graph count after it, and the final
latents' relative L2 (compiled against plain, plain-again against plain). Writes DIR/compile_toggle.json.
Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch._dynamo.utils import counters

sys.path.insert(0, str(Path(__file__).parent))

from measure import Scenario, generate, rel_l2
from real_size_smoke import real_size_components

from deepgen_core.acceleration import set_block_compile
from deepgen_core.pipeline import DeepGenPipeline


def main() -> None:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pipe = DeepGenPipeline.from_components(real_size_components("cuda", torch.bfloat16))
    pipe.set_offload("none", "cuda")
    small, large = Scenario("t2i_512_b1", 512, 1), Scenario("t2i_1024_b1", 1024, 1)
    compile_kwargs = {"backend": "inductor", "dynamic": True}
    runs, latents = [], {}

    def run(label: str, scenario: Scenario, compiled: bool) -> None:
        started = time.perf_counter()
        if set_block_compile(pipe.transformer, compile_kwargs if compiled else None):
            pipe.release_cuda_graphs()  # what DeepGenModel.pipeline does after a switch
        split, lat = generate(pipe, scenario, args.steps, seed=42)
        seconds = time.perf_counter() - started
        latents.setdefault(label, lat.float().cpu())
        runs.append({"run": label, "scenario": scenario.name, "compiled": compiled, "s": round(seconds, 3),
                     "dit_ms": round(split["dit_ms"], 1), "dynamo_graphs": counters["stats"]["unique_graphs"]})
        print(json.dumps(runs[-1]), flush=True)

    for _ in range(3):
        run("plain", small, False)
    for _ in range(3):
        run("compiled", small, True)
    run("plain_again", small, False)
    run("compiled_again", small, True)
    run("compiled_1024", large, True)
    run("compiled_512_after_1024", small, True)
    result = {
        "steps": args.steps, "device": torch.cuda.get_device_name(), "torch": torch.__version__, "runs": runs,
        "rel_l2_compiled_vs_plain": rel_l2(latents["compiled"], latents["plain"]),
        "rel_l2_plain_again_vs_plain": rel_l2(latents["plain_again"], latents["plain"]),
        "rel_l2_compiled_again_vs_compiled": rel_l2(latents["compiled_again"], latents["compiled"]),
    }
    (out / "compile_toggle.json").write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}), flush=True)


if __name__ == "__main__":
    main()
