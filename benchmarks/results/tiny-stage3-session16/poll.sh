#!/bin/bash
export PYTHONPATH=/tmp/site:$PWD
python3 benchmarks/tiny_background.py --root /tmp/bg poll --wait ${WAIT:-540}
for v in A B C; do echo $v; tail -c 400 /tmp/bg/$v/metrics.jsonl 2>/dev/null | tail -1 | cut -c1-200; ls /tmp/bg/$v/checkpoints 2>/dev/null | tail -1; done
