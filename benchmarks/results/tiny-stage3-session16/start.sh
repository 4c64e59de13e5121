#!/bin/bash
# session 16, call 1: install, start three guided-NFT stage-3 runs on the weak pairs' training prompts, checkpoint every 10 steps
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl .whl/ocr/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi -L; nproc
C="curriculum.hard_weight=1;run.max_minutes=${MIN:-13};rewards.options.ocr.workers=5;run.save_every=10;run.keep_last=0;run.save_images_every=0;run.max_steps=1000"
NFT="policy.algorithm=nft;rollout.eta=0;policy.nft_guidance_scale=4"
W="rewards.datasets=$PWD/.devcarry/s15/weak.yaml"
python3 benchmarks/tiny_background.py --root /tmp/bg start --seed-model $PWD/deepgen_core/assets/deepgen-tiny --data-scale 0.001 --threads 3 \
  --variant "A:rl:$W;$NFT;optim.lr=5e-6;$C" \
  --variant "B:rl:$W;$NFT;optim.lr=2e-6;$C" \
  --variant "C:rl:$W;$NFT;optim.lr=5e-6;policy.kl_beta=1.0;$C" || exit 1
python3 benchmarks/tiny_background.py --root /tmp/bg poll --wait ${WAIT:-500}
tail -2 /tmp/bg/*/train.log
