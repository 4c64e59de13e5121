#!/bin/bash
# session 16, call 3: scan every run's checkpoints; copy each run's best checkpoint (held-out words, then the pairs' training prompts) to $OUT
export PYTHONPATH=/tmp/site:$PWD
python3 benchmarks/tiny_background.py --root /tmp/bg poll --wait 60 >/dev/null
python3 benchmarks/tiny_checkpoint_scan.py --seed-model $PWD/deepgen_core/assets/deepgen-tiny --run /tmp/bg/A --run /tmp/bg/B --run /tmp/bg/C \
  --every ${EVERY:-10} --workers 14 --out $OUT/scan.jsonl 2>&1 | grep -v "Warn\|Loading"
for v in A B C; do cp /tmp/bg/$v/metrics.jsonl $OUT/$v.metrics.jsonl; cp /tmp/bg/$v/command.json $OUT/$v.command.json 2>/dev/null; done
python3 - <<'PY'
import json, os, shutil
rows = [json.loads(l) for l in open(os.environ["OUT"] + "/scan.jsonl")]
for run in ("A", "B", "C"):
    mine = [r for r in rows if r["run"] == run]
    if not mine:
        continue
    best = max(mine, key=lambda r: (r["heldout"], r["train_pairs"]))
    src = f"/tmp/bg/{run}/checkpoints/step-{best['step']:08d}/trainable.safetensors"
    shutil.copy(src, os.environ["OUT"] + f"/{run}-step{best['step']}.safetensors")
    print("kept", run, best)
PY
