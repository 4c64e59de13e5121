"""What a new process pays before and during its first image, per configuration of the default path (GPU).

One process = one user session: build the real-size pipeline (seeded random weights), switch a configuration
on, then time the first call of each scenario (compile, autotuning, CUDA-graph capture included) and the steady
calls after it. Run it once per cache state, each in a fresh process:

    TORCHINDUCTOR_CACHE_DIR=/tmp/ind-a python3 benchmarks/first_call.py --config compiled --save-cache /tmp/c.bin --out a.json  # cold
    TORCHINDUCTOR_CACHE_DIR=/tmp/ind-a python3 benchmarks/first_call.py --config compiled --out b.json   # torch's on-disk caches warm
    TORCHINDUCTOR_CACHE_DIR=/tmp/ind-c python3 benchmarks/first_call.py --config compiled --load-cache /tmp/c.bin --out c.json  # another machine, the artefacts file

Configurations: `graphs` (the default: CUDA graphs, exact), `graphs+fusions` (+ fused q/k/v and the GELU epilogue:
within bf16 rounding, no compile), `compiled` (what `--compile` switches on). Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from measure import Scenario, generate
from real_size_smoke import real_size_components

from deepgen_core.acceleration import load_compile_cache, save_compile_cache
from deepgen_core.pipeline import DeepGenPipeline

SCENARIOS = (Scenario("t2i_512_b1", 512, 1), Scenario("edit_512_1ref", 512, 1, 1), Scenario("t2i_1024_b1", 1024, 1))
CONFIGS = {
    "graphs": {},
    "graphs+fusions": {"fuse_projections": True, "fuse_gelu": True, "vision_varlen": True},
    "compiled": {"compile": "regional", "fuse_projections": True, "fuse_gelu": True, "vision_varlen": True},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=sorted(CONFIGS), required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--load-cache", type=Path, default=None)
    parser.add_argument("--save-cache", type=Path, default=None)
    args = parser.parse_args()
    t0 = time.perf_counter()
    result: dict = {"config": args.config, "device": torch.cuda.get_device_name(), "torch": torch.__version__,
                    "cache_loaded": bool(args.load_cache) and load_compile_cache(args.load_cache)}
    result["load_cache_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    pipe = DeepGenPipeline.from_components(real_size_components("cuda", torch.bfloat16))
    pipe.set_offload("none", "cuda")
    pipe.enable_fast_path(**CONFIGS[args.config])
    result["setup_s"] = time.perf_counter() - t0
    for scenario in SCENARIOS:
        first, _ = generate(pipe, scenario, args.steps, seed=42)
        steady = [generate(pipe, scenario, args.steps, seed=42)[0]["total_s"] for _ in range(args.runs)]
        result[scenario.name] = {"first_call_s": first["total_s"], "s_per_image": statistics.median(steady), "steady": steady}
        print(args.config, scenario.name, json.dumps(result[scenario.name]), flush=True)
    result["process_s"] = time.perf_counter() - t0 + result["load_cache_s"]
    if args.save_cache:
        result["cache_bytes"] = save_compile_cache(args.save_cache)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
