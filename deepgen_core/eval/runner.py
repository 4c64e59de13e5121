"""The one generation loop behind every benchmark: fixed batches sharded across processes, resume from the files on
disk, per-image seeds, `manifest.json`, a progress bar.

Batches are cut from the whole sample list before sharding (batch k goes to process k mod N) and every image has
its own seed, so an image does not depend on the number of processes or on where a run was interrupted. (The
reference scripts share one generator per process, so theirs depend on both; reference notes §9.7.)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from ..errors import DeepGenInputError
from . import manifest as mf
from .base import Benchmark, Sample, temp_target
from .registry import get_benchmark

logger = logging.getLogger(__name__)

SEED_STRIDE = 1000  # image j of sample i is seeded seed + 1000 * i + j (the reference RL evaluation's rule, §4.1)


@dataclass
class EvalSettings:
    """Generation settings; `None` means the benchmark's or the model's default (the paper's evaluation).

    Args:
        height, width: output size (default: the model's default size, 512 for DeepGen 1.0).
        steps: Euler steps (default 50).
        guidance_scale: CFG scale (default 4.0; DPG-Bench 7.5 as the released script).
        negative_prompt: default '' for text-to-image; for edits the model's quality negative (notes §4.1).
        seed: base seed; image j of sample i uses `seed + 1000 * i + j`.
        images_per_prompt: default per benchmark (4 for GenEval, DPG-Bench, UniGenBench, T2I-CoReBench; else 1).
        batch_size: samples per model call (default 16 for text-to-image, 4 for edits, as the reference).
        shift: scheduler shift override (default: the model's, 3.0).
        limit: only the first `limit` samples (a smoke run; the manifest records it).
    """

    height: int | None = None
    width: int | None = None
    steps: int | None = None
    guidance_scale: float | None = None
    negative_prompt: str | None = None
    seed: int = 42
    images_per_prompt: int | None = None
    batch_size: int | None = None
    shift: float | None = None
    limit: int | None = None


@dataclass
class EvalResult:
    """What one process did: `generated` sample keys, `skipped` (already on disk), the folder and its manifest."""

    benchmark: str
    out: Path
    generated: list[str] = field(default_factory=list)
    skipped: int = 0
    total: int = 0
    manifest: Path | None = None
    scorer_command: str = ""


def resolve_settings(bench: Benchmark, settings: EvalSettings, pipe, default_steps: int = 50) -> dict:
    """The concrete settings of a run (recorded in the manifest), checked before any generation."""
    size = pipe.encoder.config.default_image_size
    n = settings.images_per_prompt or bench.images_per_prompt
    resolved = {
        "height": settings.height or size, "width": settings.width or size, "steps": settings.steps or default_steps,
        "guidance_scale": bench.guidance_scale if settings.guidance_scale is None else settings.guidance_scale,
        "negative_prompt": settings.negative_prompt if settings.negative_prompt is not None
        else (pipe.encoder.config.default_edit_negative if bench.task == "edit" else ""),
        "seed": settings.seed, "seed_rule": f"seed + {SEED_STRIDE} * sample + image", "images_per_prompt": n,
        "batch_size": settings.batch_size or bench.batch_size, "shift": settings.shift, "dtype": str(pipe.dtype).removeprefix("torch."),
        "reference_resize": "squash to the output size (bicubic)" if bench.task == "edit" else None,
    }
    if bench.allowed_images_per_prompt and n not in bench.allowed_images_per_prompt:
        raise DeepGenInputError(f"--images-per-prompt {n}: {bench.title}'s scorer reads {list(bench.allowed_images_per_prompt)} image(s) per prompt; pass one of those.")
    for name in ("images_per_prompt", "batch_size", "steps"):
        if resolved[name] < 1:
            raise DeepGenInputError(f"--{name.replace('_', '-')} must be >= 1, got {resolved[name]}.")
    unit = 32 if bench.task == "edit" else 16  # edit references are squashed to the output size: multiples of 32
    for side in ("height", "width"):
        if resolved[side] % unit or resolved[side] < unit:
            raise DeepGenInputError(f"--{side} {resolved[side]}: {bench.title} needs a multiple of {unit} (e.g. {max(unit, round(resolved[side] / unit) * unit)}).")
    return resolved


def shard_batches(samples: Sequence[Sample], batch_size: int, rank: int, world: int) -> list[list[tuple[int, Sample]]]:
    """Fixed batches of (sample number, sample) over the whole list; process `rank` of `world` takes every
    world-th batch, so the batches (and the images) are the same for any number of processes."""
    numbered = list(enumerate(samples))
    batches = [numbered[i : i + batch_size] for i in range(0, len(numbered), batch_size)]
    return batches[rank::world]


def is_done(out: Path, bench: Benchmark, sample: Sample, n: int) -> bool:
    return all((out / name).is_file() for name in bench.files(sample, n))


def remove_stale_temps(out: Path, targets: set[Path]) -> int:
    """Delete the temporary files a killed run left for `targets` (every file is written as `.NAME.PID.tmp`, then
    renamed), so a resumed folder holds exactly what an uninterrupted run writes. Returns how many were deleted."""
    stale = [tmp for tmp in out.rglob(".*.tmp") if temp_target(tmp) in targets]
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    if stale:
        logger.info("removed %d temporary file(s) an interrupted run left in %s", len(stale), out)
    return len(stale)


def squash(image: Image.Image, width: int, height: int) -> Image.Image:
    """The reference's edit preprocessing: the source resized to the output size, aspect not kept (notes §3.6)."""
    return image.convert("RGB").resize((width, height), Image.BICUBIC)


def generate_batch(pipe, bench: Benchmark, batch: list[tuple[int, Sample]], cfg: dict) -> list[list[Image.Image]]:
    """Images for a batch, `images_per_prompt` per sample, each from its own seeded CPU generator."""
    n, h, w = cfg["images_per_prompt"], cfg["height"], cfg["width"]
    gens = [torch.Generator("cpu").manual_seed(cfg["seed"] + SEED_STRIDE * i + j) for i, _ in batch for j in range(n)]
    latents = torch.cat([pipe.prepare_latents(1, h, w, g) for g in gens])
    extra = {}
    if bench.task == "edit":
        refs = [[squash(sample.reference(), w, h)] for _, sample in batch]
        pixels = pipe.prepare_reference_pixels(refs, len(batch), "none", max(h, w))
        # the posterior noise of sample k comes from its first image's generator, after its initial noise
        ref_latents = [pipe.encode_reference_latents([p], gens[k * n])[0] for k, p in enumerate(pixels)]
        extra = {"image": refs, "reference_resize": "none", "reference_size": max(h, w), "reference_latents": ref_latents}
    out = pipe(
        [sample.prompt for _, sample in batch], negative_prompt=cfg["negative_prompt"], height=h, width=w,
        num_inference_steps=cfg["steps"], guidance_scale=cfg["guidance_scale"], shift=cfg["shift"],
        num_images_per_prompt=n, latents=latents, **extra,
    )
    return [out.images[k * n : (k + 1) * n] for k in range(len(batch))]


def process_state(cpu: bool):
    """accelerate's process state (rank, world size, barrier) of an `accelerate launch` / `torchrun` job, or of a
    single process. `cpu`: CPU processes join through gloo (accelerate only does so when asked)."""
    from accelerate import PartialState

    return PartialState(cpu=cpu)


def _manifest(bench: Benchmark, data: Path, out: Path, cfg: dict, samples: int, limit: int | None, model_paths: Sequence[Path], old: dict | None) -> dict:
    files = mf.model_files([Path(p) for p in model_paths])
    hashes = mf.hash_files(files, (old or {}).get("model", {}).get("files"))
    before = sorted(f["sha256"] for f in (old or {}).get("model", {}).get("files", {}).values())
    if old is not None and before and before != sorted(f["sha256"] for f in hashes.values()):
        raise DeepGenInputError(f"--out {str(out)!r} was written by another model (its {mf.MANIFEST} lists other file hashes); resume with that model or use a new --out folder.")
    return {
        "benchmark": bench.name, "title": bench.title, "data": str(data.resolve()), "data_sha256": mf.data_digest(data), "samples": samples, "limit": limit,
        "generation": cfg, "model": {"paths": [str(p) for p in model_paths], "files": hashes},
        "versions": mf.library_versions(), "paper": bench.paper, "started": (old or {}).get("started", mf.now()), "complete": False,
    }


def run_eval(
    benchmark: str | Benchmark,
    data: str | Path,
    out: str | Path,
    pipe,
    settings: EvalSettings | None = None,
    *,
    model_paths: Sequence[str | Path] = (),
    image_root: str | Path | None = None,
    default_steps: int = 50,
    samples: list[Sample] | None = None,
    progress: bool = True,
    on_batch: Callable[[list[str]], None] | None = None,
) -> EvalResult:
    """Generate a benchmark's images into `out` in the layout its official scorer reads.

    Runs in every process of an `accelerate launch` / `torchrun` job (each takes its share of the batches); a
    second call skips samples whose files exist. Returns what this process did.

    Args:
        benchmark: a name from `BENCHMARKS` (or a `Benchmark`).
        data: the benchmark's published prompt/data file or folder.
        out: the output folder (one per benchmark and setting).
        pipe: a `DeepGenPipeline`.
        settings: generation settings (`EvalSettings`; defaults are the paper's).
        model_paths: the model files/folders to hash into the manifest.
        image_root: the folder edit benchmarks' source image paths are relative to (default: the data file's).
        samples: the benchmark's samples when already read (default: read from `data`).
        on_batch: called with the keys of each finished batch (progress hooks, tests).
    """
    bench = get_benchmark(benchmark) if isinstance(benchmark, str) else benchmark
    data, out = Path(data), Path(out)
    settings = settings or EvalSettings()
    if samples is None:
        samples = bench.read(data, Path(image_root) if image_root else None)
    if settings.limit is not None:
        samples = samples[: settings.limit]
    cfg = resolve_settings(bench, settings, pipe, default_steps)
    mf.check_out_dir(out, bench.name, cfg)
    state = process_state(cpu=pipe.device.type == "cpu")
    if state.is_main_process:
        old = mf.read_manifest(out)
        mf.write_manifest(out, _manifest(bench, data, out, cfg, len(samples), settings.limit, model_paths, old))
    result = EvalResult(bench.name, out, total=len(samples), manifest=out / mf.MANIFEST, scorer_command=bench.scorer(out, data, cfg))
    _generate_shard(pipe, bench, samples, out, cfg, state, result, progress and state.is_local_main_process, on_batch)
    state.wait_for_everyone()
    if state.is_main_process:
        _finish(bench, out, samples, cfg, result)
    return result


def _generate_shard(pipe, bench, samples, out, cfg, state, result, show, on_batch) -> None:
    from tqdm.auto import tqdm

    n = cfg["images_per_prompt"]
    batches = shard_batches(samples, cfg["batch_size"], state.process_index, state.num_processes)
    # each process cleans only its own samples' files (and the first the manifest's), never another's live write
    mine = {out / name for batch in batches for _, s in batch for name in bench.files(s, n)}
    remove_stale_temps(out, mine | ({out / mf.MANIFEST} if state.is_main_process else set()))
    todo = [[(i, s) for i, s in batch if not is_done(out, bench, s, n)] for batch in batches]
    pending = sum(len(b) for b in todo)
    result.skipped = sum(len(b) for b in batches) - pending
    if result.skipped:
        logger.info("%s: %d of this process's samples are already in %s; resuming with %d", bench.title, result.skipped, out, pending)
    with tqdm(total=pending, desc=f"{bench.name} [{state.process_index + 1}/{state.num_processes}]", unit="sample", disable=not show) as bar:
        for batch in filter(None, todo):
            with torch.inference_mode():
                images = generate_batch(pipe, bench, batch, cfg)
            for (_, sample), sample_images in zip(batch, images):
                bench.save(out, sample, sample_images)
            keys = [s.key for _, s in batch]
            result.generated.extend(keys)
            bar.update(len(batch))
            if on_batch is not None:
                on_batch(keys)


def _finish(bench: Benchmark, out: Path, samples: list[Sample], cfg: dict, result: EvalResult) -> None:
    done = sum(is_done(out, bench, s, cfg["images_per_prompt"]) for s in samples)
    content = mf.read_manifest(out) or {}
    content.update(finished=mf.now(), samples_done=done, complete=done == len(samples))
    mf.write_manifest(out, content)
    logger.info("%s: %d/%d samples in %s", bench.title, done, len(samples), out)
    logger.info("score with the official scorer: %s", result.scorer_command)


__all__ = ["EvalResult", "EvalSettings", "generate_batch", "resolve_settings", "run_eval", "shard_batches"]
