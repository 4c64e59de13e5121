#!/bin/bash
# hold 2, call 1: DiffusionNFT with one forward noise per group (policy.nft_group_noise)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl .whl/ocr/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi -L
C="run.max_minutes=${MIN:-16};rewards.options.ocr.workers=5;run.save_every=100;run.save_images_every=0;run.max_steps=1000"
NFT="policy.algorithm=nft;rollout.eta=0;policy.nft_guidance_scale=4;policy.nft_group_noise=true"
J1="curriculum.images_per_prompt=2"
S=$PWD/.devcarry/s15
python3 benchmarks/tiny_background.py --root /tmp/bg start --seed-model $PWD/deepgen_core/assets/deepgen-tiny --data-scale 0.001 --threads 3 \
  --variant "G1:rl:rewards.datasets=$S/weak.yaml;curriculum.hard_weight=1;$NFT;optim.lr=5e-6;$C" \
  --variant "G2:rl:$J1;$NFT;optim.lr=5e-6;$C" \
  --variant "G3:rl:$J1;$NFT;optim.lr=1e-5;$C" || exit 1
python3 benchmarks/tiny_background.py --root /tmp/bg poll --wait ${WAIT:-500}
