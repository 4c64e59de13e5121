"""DeepGen-Tiny training variants that run in the background of a device machine across several device calls.

A device call lasts at most 10 minutes, but a machine stays held while calls keep coming, and a process started
in its own session (`setsid`) outlives the call that started it. So one call starts the variants, later calls poll
them, and the last one evaluates every variant's export on the held-out split and copies the results to OUT:

    python3 benchmarks/probes/tiny_background.py start --seed-model .devcarry/s2prev --variant 'v1:sft:micro_batch_size=1024' ...
    python3 benchmarks/probes/tiny_background.py poll --wait 540
    python3 benchmarks/probes/tiny_background.py finish --out-dir $OUT
    python3 benchmarks/probes/tiny_background.py eval --tasks t2i,edit,text MODEL_FOLDER ...   (any time, any machine)

A variant is `NAME:STAGE:OVERRIDE;OVERRIDE;...` over the shipped tiny recipe of that stage (`sft` -> stage2.yaml,
`pretrain` -> stage1.yaml, `rl` -> stage3.yaml); its model source defaults to the seed model. `NAME:STAGE@OTHER:...`
starts when the variant OTHER (named before it) has ended, from OTHER's export. `--data KEY=VALUE`
overrides data.yaml (e.g. `n_edit=64000`). Everything lives under --root. Set OMP_NUM_THREADS (`--threads`): three
processes with torch's default thread count spin the 16 host cores and starve the GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
RECIPES = {"sft": "stage2.yaml", "pretrain": "stage1.yaml", "rl": "stage3.yaml"}


def start(args: argparse.Namespace) -> None:
    from deepgen_core.tiny_world import write_dataset, write_rl_prompts

    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    data = yaml.safe_load((REPO / "train/recipes/tiny/data.yaml").read_text())
    data.update({k: int(v) for k, v in (item.split("=", 1) for item in args.data or [])})
    if not (root / "data" / "edit.json").is_file():
        began = time.perf_counter()
        n = {k: max(1, int(data[k] * args.data_scale)) for k in ("n_t2i", "n_edit", "n_text")}
        write_dataset(root / "data", **n, seed=data["seed"],
                      size=data["size"], workers=os.cpu_count() or 1)
        write_rl_prompts(root / "rl-prompts", n_text=data["rl_text_prompts"], n_shapes=data["rl_shape_prompts"], seed=data["seed"] + 1)
        print(f"data {n} written in {time.perf_counter() - began:.0f} s", flush=True)
    pids: dict[str, int] = {}
    for spec in args.variant:
        name, stage, overrides = (spec.split(":", 2) + [""])[:3]
        stage, _, after = stage.partition("@")
        folder = root / name
        folder.mkdir(exist_ok=True)
        recipe = (REPO / "train/recipes/tiny" / RECIPES[stage]).read_text().replace("{run}", str(root))
        (folder / "recipe.yaml").write_text(recipe)
        items = [o for o in overrides.split(";") if o]
        if not any(o.startswith("model.source=") for o in items):
            items.append(f"model.source={root / after / 'export' if after else args.seed_model}")
        if stage == "rl":
            items += [f"run.output_dir={folder}"]
        else:
            items += [f"checkpoint.output_dir={folder}", f"data.num_workers={args.workers}"]
        command = [sys.executable, "-m", "deepgen_core.cli", "train", stage, "--config", str(folder / "recipe.yaml"), *items]
        (folder / "command.json").write_text(json.dumps(command))
        if after:  # wait in a shell until that variant's process has ended, then run only if it exported
            command = ["sh", "-c", (f'while kill -0 {pids[after]} 2>/dev/null; do sleep 5; done; '
                       f'test -f {shlex.quote(str(root / after / "export" / "deepgen.json"))} && exec {shlex.join(command)}')]
        with open(folder / "train.log", "w") as log:  # the child keeps its own copy of the descriptor
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO,
                                       env=dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=str(args.threads)))
        (folder / "pid").write_text(str(process.pid))
        pids[name] = process.pid
        print(f"started {name} (pid {process.pid}): {' '.join(items)}", flush=True)


def _variants(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if (p / "command.json").is_file())


def _running(folder: Path) -> bool:
    status = Path(f"/proc/{int((folder / 'pid').read_text())}/status")
    return status.is_file() and "zombie" not in status.read_text()


def _last_metrics(folder: Path) -> str:
    path = folder / "metrics.jsonl"
    if not path.is_file():
        return "no metrics yet"
    lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    if not lines:
        return "no metrics yet"
    last = lines[-1]
    keys = ("step", "loss", "loss/text2image", "loss/image2image", "samples_per_s", "lr", "reward/ocr", "reward/shape_world", "kl",
            "ratio_dev", "clip_frac", "time/reward")
    return " ".join(f"{k}={last[k]:.4g}" if isinstance(last.get(k), float) else f"{k}={last.get(k)}" for k in keys if k in last)


def poll(args: argparse.Namespace) -> None:
    root = Path(args.root)
    deadline = time.monotonic() + args.wait
    while True:
        running = [v for v in _variants(root) if _running(v)]
        if not running or time.monotonic() >= deadline:
            break
        time.sleep(min(20.0, max(0.0, deadline - time.monotonic())))
    for v in _variants(root):
        state = "running" if _running(v) else ("done" if (v / "export" / "deepgen.json").is_file() else "STOPPED")
        print(f"{v.name}: {state}: {_last_metrics(v)}", flush=True)
        if state == "STOPPED":
            print((v / "train.log").read_text()[-3000:], flush=True)


def _evaluate_row(pipe, n: int, n_text: int) -> dict:
    """t2i + edit (n each) and text (n_text, OCR read in parallel) on the held-out split, 20 steps, CFG 4."""
    from deepgen_core.rewards.ocr import OCRReward
    from deepgen_core.tiny_world.evaluate import (
        evaluate_edits,
        evaluate_t2i,
        evaluate_text,
    )

    settings = {"steps": 20, "batch": 64, "cfg": 4.0}
    row = {"t2i": evaluate_t2i(pipe, n=n, **settings), "edit": evaluate_edits(pipe, n=n, **settings)}
    if n_text:
        ocr = OCRReward(workers=8)
        try:
            row["text"] = evaluate_text(pipe, n=n_text, **settings, ocr=ocr)
        finally:
            ocr.close()
    return row


def finish(args: argparse.Namespace) -> None:
    import torch

    from deepgen_core.pipeline import DeepGenPipeline

    root, out = Path(args.root), Path(args.out_dir)
    poll(argparse.Namespace(root=args.root, wait=args.wait))
    results = {}
    models = {f"baseline:{m}": Path(m) for m in args.baseline or []}
    models.update({v.name: v / "export" for v in _variants(root)})
    for name, export in models.items():
        if not (export / "deepgen.json").is_file():
            continue
        pipe = DeepGenPipeline.from_pretrained(export, torch_dtype=torch.float32).to("cuda" if torch.cuda.is_available() else "cpu")
        results[name] = _evaluate_row(pipe, args.n, args.n_text)
        print(name, json.dumps(results[name]), flush=True)
    (root / "eval.json").write_text(json.dumps(results, indent=1))
    with tarfile.open(out / "results.tar", "w") as tar:
        tar.add(root / "eval.json", arcname="eval.json")
        for v in _variants(root):
            for name in ("metrics.jsonl", "train.log", "command.json"):
                if (v / name).is_file():
                    tar.add(v / name, arcname=f"{v.name}/{name}")
    for v in args.keep or []:  # one tar per export (about 14 MB in bf16: the device returns files up to 16 MiB)
        with tarfile.open(out / f"{v}-export.tar", "w") as tar:
            for name in ("deepgen-encoder.safetensors", "deepgen-transformer.safetensors", "deepgen.json"):
                if (root / v / "export" / name).is_file():
                    tar.add(root / v / "export" / name, arcname=f"{v}/export/{name}")


def evaluate(args: argparse.Namespace) -> None:
    """Held-out metrics of model folders (a stage's export), one JSON line each."""
    import torch

    from deepgen_core.pipeline import DeepGenPipeline
    from deepgen_core.tiny_world.evaluate import evaluate_all

    sizes = {task: (args.n if task in args.tasks.split(",") else 0) for task in ("t2i", "edit", "text")}
    for folder in args.models:
        pipe = DeepGenPipeline.from_pretrained(folder, torch_dtype=torch.float32).to("cuda" if torch.cuda.is_available() else "cpu")
        results = evaluate_all(pipe, n_t2i=sizes["t2i"], n_edit=sizes["edit"], n_text=sizes["text"], steps=20, batch=64)
        print(json.dumps({"model": folder, **results}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="/tmp/tiny-bg")
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("start")
    s.add_argument("--seed-model", required=True, help="converted DeepGen folder the variants start from")
    s.add_argument("--variant", action="append", required=True, help="NAME:STAGE:key=value;key=value")
    s.add_argument("--workers", type=int, default=4)
    s.add_argument("--data-scale", type=float, default=1.0, help="fraction of the recipe's dataset (a quick check)")
    s.add_argument("--data", action="append", help="KEY=VALUE over data.yaml (n_t2i, n_edit, n_text, rl_text_prompts, ...)")
    s.add_argument("--threads", type=int, default=4, help="OMP_NUM_THREADS of every variant process")
    s.set_defaults(handler=start)
    p = sub.add_parser("poll")
    p.add_argument("--wait", type=float, default=540, help="seconds to wait at most for the variants to finish")
    p.set_defaults(handler=poll)
    f = sub.add_parser("finish")
    f.add_argument("--out-dir", required=True)
    f.add_argument("--wait", type=float, default=300)
    f.add_argument("--n", type=int, default=64)
    f.add_argument("--n-text", type=int, default=64, help="held-out text prompts read by OCR (0: skip)")
    f.add_argument("--baseline", action="append", help="a model folder evaluated beside the variants (e.g. the seed model)")
    f.add_argument("--keep", action="append", help="variant whose export (encoder + transformer) goes to OUT")
    f.set_defaults(handler=finish)
    e = sub.add_parser("eval")
    e.add_argument("models", nargs="+")
    e.add_argument("--tasks", default="t2i,edit,text")
    e.add_argument("--n", type=int, default=64)
    e.set_defaults(handler=evaluate)
    args = parser.parse_args()
    args.handler(args)


if __name__ == "__main__":
    main()
