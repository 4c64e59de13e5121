"""Run the DeepGen-Tiny recipe on the device within one call: optionally shrink step counts (a shakedown that
calibrates throughput), run `run_tiny_recipe`, and copy the small results (timings, metrics, logs, package) to OUT.

    python3 benchmarks/deepgen_tiny_device.py --out-dir $OUT [--set stage1.yaml:max_steps=300 ...]
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import tarfile
import time
from pathlib import Path

import yaml

from deepgen_core.train.tiny_recipe import DEFAULT_RECIPES, TinyRun, run_tiny_recipe


def shrink(target: Path, settings: list[str]) -> None:
    shutil.copytree(DEFAULT_RECIPES, target)
    for item in settings:
        name, assignment = item.split(":", 1)
        key, value = assignment.split("=", 1)
        data = yaml.safe_load((target / name).read_text())
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
        (target / name).write_text(yaml.safe_dump(data))


def main() -> None:
    parser = argparse.ArgumentParser(allow_abbrev=False)
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--run", default="/tmp/deepgen-tiny")
    parser.add_argument("--until", default="package")
    parser.add_argument("--set", action="append", default=[], help="FILE:key.sub=value")
    parser.add_argument("--seed-from", default=None, help="copy this folder (finished steps carried from an earlier call) into the run folder first")
    parser.add_argument("--return", dest="returns", action="append", default=[], help="run-relative folders to return in the tarball (e.g. stage1/export)")
    args = parser.parse_args()
    if args.seed_from:
        shutil.copytree(args.seed_from, args.run, dirs_exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    recipes = Path("/tmp/tiny-recipes")
    shutil.rmtree(recipes, ignore_errors=True)
    shrink(recipes, args.set)
    out = Path(args.out_dir)
    start = time.perf_counter()
    try:
        records = run_tiny_recipe(TinyRun(args.run, recipes), last=args.until)
        print(json.dumps({k: v.get("seconds") for k, v in records.items()}))
    finally:
        run = Path(args.run)
        print(f"total {time.perf_counter() - start:.0f} s")
        patterns = ["*.done", "metrics.*", "samples-*.png", "recipes/*", "*/metrics.jsonl", "vae/report.json", "stage3/samples/**/*", "package/*.json"]
        patterns += [f"{folder}/*.json" for folder in args.returns]
        with tarfile.open(out / "results.tar", "w") as tar:  # small files in one: the device returns at most 8 files
            for pattern in patterns:
                for path in run.glob(pattern):
                    if path.is_file():
                        tar.add(path, arcname=str(path.relative_to(run)))
        for folder in args.returns:  # weights one by one (16 MiB per returned file)
            for path in (run / folder).glob("*.safetensors"):
                dest = out / folder.replace("/", "_") / path.name
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(path, dest)


if __name__ == "__main__":
    main()
