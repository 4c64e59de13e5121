"""Where does a DeepGen-Tiny stage-1 step spend its time? cProfile over N trainer steps on the device (the
recipe's stage 1, latent cache included), plus, with --ocr, the OCR reward's cost per image (sequential vs a
thread pool). Writes nothing but stdout.

    python3 benchmarks/probes/tiny_train_profile.py [STEPS] [MICRO_BATCH] [--ocr]
"""

from __future__ import annotations

import cProfile
import io
import pstats
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch


def main() -> None:
    from deepgen_core.loading import save_converted
    from deepgen_core.models.tiny_vae import tiny_taesd_vae
    from deepgen_core.presets import deepgen_tiny_architecture
    from deepgen_core.tiny_world import TextScene, render_text, write_dataset
    from deepgen_core.train.config import load_config
    from deepgen_core.train.trainer import Trainer

    run = Path("/tmp/prof-run")
    write_dataset(run / "data", n_t2i=2000, n_edit=1000, n_text=1000, seed=0, workers=16)
    save_converted(deepgen_tiny_architecture(0, vae=tiny_taesd_vae(0)), run / "init", dtype=torch.float32)
    (run / "s1.yaml").write_text(Path("train/recipes/tiny/stage1.yaml").read_text().replace("{run}", str(run)))
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    steps = int(args[0]) if args else 40
    batch = int(args[1]) if len(args) > 1 else 256
    overrides = [f"max_steps={steps}", f"micro_batch_size={batch}", "checkpoint.resume=never", "checkpoint.save_every=0", "checkpoint.save_at_end=false", "checkpoint.export_at_end=false", "optim.warmup_steps=1"]
    trainer = Trainer(load_config("pretrain", run / "s1.yaml", overrides))
    profile = cProfile.Profile()
    start = time.perf_counter()
    profile.runcall(trainer.run)
    print(f"{steps} steps of {batch} in {time.perf_counter() - start:.1f} s (latent cache built once, included)")
    for key in ("tottime", "cumulative"):
        text = io.StringIO()
        pstats.Stats(profile, stream=text).sort_stats(key).print_stats(40)
        print(text.getvalue()[-6000:])
    if "--ocr" not in sys.argv:
        return
    from deepgen_core.rewards import OCRReward

    ocr = OCRReward()
    images = [render_text(TextScene("CAT", "black", "white")) for _ in range(32)]
    ocr.recognize(images[0])
    start = time.perf_counter()
    [ocr.recognize(im) for im in images]
    print(f"OCR sequential: {(time.perf_counter() - start) / 32 * 1000:.1f} ms/image")
    with ThreadPoolExecutor(8) as pool:
        start = time.perf_counter()
        list(pool.map(ocr.recognize, images))
        print(f"OCR 8 threads: {(time.perf_counter() - start) / 32 * 1000:.1f} ms/image")


if __name__ == "__main__":
    main()
