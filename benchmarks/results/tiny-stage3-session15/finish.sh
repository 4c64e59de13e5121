#!/bin/bash
export PYTHONPATH=/tmp/site:$PWD
python3 benchmarks/tiny_background.py --root /tmp/bg finish --out-dir $OUT --wait ${WAIT:-240} --n 128 --n-text 256 \
  --baseline $PWD/deepgen_core/assets/deepgen-tiny $(for v in ${KEEP:-G1 G2 G3}; do echo --keep $v; done) | grep -v "^[GW]\|^baseline"
python3 -c "
import json
d=json.load(open('/tmp/bg/eval.json'))
for k,v in d.items(): print(k[-30:], 'shape %.3f'%v['t2i']['shape'], 'edit %.3f'%v['edit']['success'], 'psnr %.1f'%v['edit']['psnr_untouched'], 'words %.3f'%v['text']['exact_word'])
"
