#!/bin/bash
# hold 1, call 1: install, start three stage-3 variants in the background, poll
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl .whl/ocr/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi -L; nproc
C="curriculum.hard_weight=1;run.max_minutes=${MIN:-18};rewards.options.ocr.workers=5;run.save_every=100;run.save_images_every=0;run.max_steps=1000"
NFT="policy.algorithm=nft;rollout.eta=0;policy.nft_guidance_scale=4;optim.lr=5e-6"
S=$PWD/.devcarry/s15
python3 benchmarks/tiny_background.py --root /tmp/bg start --seed-model $PWD/deepgen_core/assets/deepgen-tiny --data-scale 0.001 --threads 3 \
  --variant "W1:rl:rewards.datasets=$S/weak.yaml;$NFT;$C" \
  --variant "W2:rl:rewards.datasets=$S/weak.yaml;$C" \
  --variant "N1:rl:rewards.datasets=$S/novel.yaml;$NFT;$C" || exit 1
python3 benchmarks/tiny_background.py --root /tmp/bg poll --wait ${WAIT:-500}
tail -3 /tmp/bg/*/train.log
