"""One process of a sharded evaluation run (launched by tests/test_eval.py under torch.distributed.run): DeepGen-Tiny
on a benchmark file, then the keys this process generated in <out>.rank<RANK>.json."""

import json
import os
import sys
from pathlib import Path

import torch

from deepgen_core.eval import EvalSettings, load_model, run_eval

benchmark, data, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
torch.set_num_threads(1)
pipe, paths, _ = load_model(device="cpu")
result = run_eval(benchmark, data, out, pipe, EvalSettings(height=64, width=64, steps=2, batch_size=2), model_paths=paths, progress=False)
Path(f"{out}.rank{os.environ['RANK']}.json").write_text(json.dumps(result.generated))
