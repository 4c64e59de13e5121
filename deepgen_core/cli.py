"""`deepgen` command line: `generate` (text-to-image / edit), `convert` (release -> safetensors layout), `train`,
`reward-server`, `tiny-world` (DeepGen-Tiny's procedural data and evaluation)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from .errors import DeepGenInputError

DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def _add_model_args(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument("--model", required=required, help="converted DeepGen folder/file, a DeepGen-1.0-diffusers folder, or a DeepGen checkpoint (model.pt, iter_*.pth, .safetensors)")
    p.add_argument("--vlm", help="Qwen2.5-VL-3B-Instruct folder (with a release checkpoint; with a diffusers folder it replaces vlm/)")
    p.add_argument("--diffusion", help="UniPic2-SD3.5M-Kontext folder with transformer/ vae/ scheduler/ (with a release checkpoint)")
    p.add_argument("--config", help="DeepGen config JSON (default: deepgen_config.json beside the checkpoint, else inferred)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deepgen", description="DeepGen 1.0 image generation and editing, offline.")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="generate or edit an image")
    gen.add_argument("--prompt", required=True, help="the prompt or edit instruction (may be empty)")
    gen.add_argument("--image", action="append", default=[], help="reference image for editing (repeat for several)")
    gen.add_argument("--negative-prompt", default=None, help="default: '' for text-to-image; for edits the model's default (the reference's quality negative for DeepGen 1.0, '' for DeepGen-Tiny)")
    gen.add_argument("--out", default="deepgen.png", help="output PNG path (several images get _0, _1, ... suffixes)")
    gen.add_argument("--height", type=int, default=None)
    gen.add_argument("--width", type=int, default=None)
    gen.add_argument("--steps", type=int, default=None, help="denoising steps, 1-1000 (default 50; 25 on the embedded DeepGen-Tiny)")
    gen.add_argument("--cfg", type=float, default=4.0, help="classifier-free guidance scale, 0-100 (<= 1 disables it)")
    gen.add_argument("--shift", type=float, default=None, help="scheduler shift override, 0.1-100 (default: the model's, 3.0)")
    gen.add_argument("--seed", type=int, default=42, help="0 .. 2**64-1, or -1 for a random seed (printed so the image can be reproduced)")
    gen.add_argument("--num-images", type=int, default=1, help="images per prompt, 1-256")
    gen.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    gen.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: bf16 on GPU, fp32 on CPU")
    speed = gen.add_argument_group("speed and memory (GPU; see docs/performance.md)")
    speed.add_argument("--compile", action="store_true", help="regional torch.compile of the DiT + fused q/k/v and MLP GELU, varlen vision attention (~45 s once per process, then ~1.6x faster steps; equal within bf16 rounding)")
    speed.add_argument("--compile-cache", type=Path, default=None, help="file to load torch's compile artefacts from (when present) and save them to: later runs skip most of the compile")
    speed.add_argument("--fp8", action="store_true", help="fp8 DiT block weights (half the DiT memory; NOT exact)")
    speed.add_argument("--fp8-encoder", action="store_true", help="fp8 weights for the VLM's decoder layers and vision blocks too (half the encoder memory; NOT exact)")
    speed.add_argument("--offload", choices=["none", "model", "sequential"], default="none", help="model: each component visits the GPU only while it runs (~7 GiB peak at 1024^2); sequential: layer by layer (lowest memory, slowest)")
    speed.add_argument("--vae-tiling", action="store_true", help="decode in 512 px tiles (less memory above 1024^2; seams are blended)")
    speed.add_argument("--step-cache", type=float, default=0.0, metavar="THRESHOLD", help="reuse the last DiT velocity while the first block's input changes by less than THRESHOLD (accumulated relative L1; 0 = off, 0.05-0.2 skip 10-50%% of the steps; NOT exact)")
    speed.add_argument("--no-cuda-graphs", action="store_true", help="run the DiT eagerly instead of replaying CUDA graphs")
    _add_model_args(gen, required=False)

    conv = sub.add_parser("convert", help="write a DeepGen release as safetensors files (no pickle, mmap-able)")
    _add_model_args(conv, required=True)
    conv.add_argument("--out", required=True, help="output folder")
    conv.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    conv.add_argument("--layout", choices=["safetensors", "diffusers"], default="safetensors", help="safetensors: our three self-describing files; diffusers: the authors' DeepGen-1.0-diffusers folder (LoRA merged into vlm/), docs/loading.md")

    from .eval.cli import add_eval_parser
    from .native_cli import add_lora_parser
    from .rewards.service import add_reward_server_parser
    from .tiny_world.cli import add_tiny_world_parser
    from .train.cli import add_train_parser
    from .train.rl.cli import add_rl_parser

    add_train_parser(sub)
    add_rl_parser(sub)  # `train rl`, in the RL package's own module
    add_reward_server_parser(sub)
    add_tiny_world_parser(sub)
    add_lora_parser(sub)  # `extract-dit-lora`, for ComfyUI's LoRA loaders
    add_eval_parser(sub)  # `eval`, in the eval package's own module
    return no_abbreviations(parser)


def no_abbreviations(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Turn off argparse's prefix matching on `parser` and all its subcommands: `--token 123` must be an error,
    not `--token-file 123`."""
    parser.allow_abbrev = False
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                no_abbreviations(sub)
    return parser


def _pipeline(args: argparse.Namespace, device: str, dtype):
    from .pipeline import DeepGenPipeline

    if args.model is None:
        from .presets import deepgen_tiny_dir

        log = logging.getLogger("deepgen")
        try:
            path = deepgen_tiny_dir()
        except FileNotFoundError as exc:
            # A checkout without the embedded weights still runs the command, on the untrained architecture.
            from .loading import cast
            from .presets import deepgen_tiny_architecture

            log.warning("%s Using DeepGen-Tiny with seeded RANDOM weights instead: the image will be noise.", exc)
            components = deepgen_tiny_architecture(seed=0)
            for name in ("encoder", "transformer", "vae"):
                setattr(components, name, cast(getattr(components, name), dtype).eval())
            return DeepGenPipeline.from_components(components).to(device), True
        log.info("no --model given: using the embedded DeepGen-Tiny (128 px, shapes and words)")
        return DeepGenPipeline.from_pretrained(path, torch_dtype=dtype, device=device), True
    return DeepGenPipeline.from_pretrained(args.model, vlm=args.vlm, diffusion=args.diffusion, config=args.config, torch_dtype=dtype, device=device), False


def _generate(args: argparse.Namespace) -> int:
    import torch

    from .errors import GenerationError
    from .user_files import open_image

    seed, out_path = check_generate_args(args)  # everything the user typed, before the model loads
    images = [open_image(p, "--image") for p in args.image] or None
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, DTYPES[args.dtype]) if args.dtype else (torch.bfloat16 if device.startswith("cuda") else torch.float32)
    pipe, tiny = _pipeline(args, device, dtype)
    _speed_switches(pipe, args, device)
    steps = (25 if tiny else 50) if args.steps is None else args.steps
    try:
        out = pipe(
            args.prompt, image=images, negative_prompt=args.negative_prompt, height=args.height, width=args.width,
            num_inference_steps=steps, guidance_scale=args.cfg, shift=args.shift, num_images_per_prompt=args.num_images,
            generator=torch.Generator("cpu").manual_seed(seed),
        )
    except GenerationError as exc:
        raise GenerationError(f"{exc} {keep_latents(exc.latents, out_path)}", exc.latents) from exc
    out_path.parent.mkdir(parents=True, exist_ok=True)
    paths = [out_path] if len(out.images) == 1 else [out_path.with_name(f"{out_path.stem}_{i}{out_path.suffix}") for i in range(len(out.images))]
    for img, path in zip(out.images, paths):
        img.save(path)
        print(path)
    if args.compile_cache and args.compile:
        from .acceleration import save_compile_cache

        save_compile_cache(args.compile_cache)
    return 0


def check_generate_args(args: argparse.Namespace) -> tuple[int, Path]:
    """Validate `generate`'s numbers and output path before any model work; returns (seed, output path)."""
    from .acceleration.step_cache import STEP_CACHE_LIMIT
    from .user_files import check_output_file
    from .validation import LIMITS, check_number, check_sampling, check_size, named_as, resolve_seed

    flags = {"num_inference_steps": "--steps", "guidance_scale": "--cfg", "shift": "--shift", "num_images_per_prompt": "--num-images",
             "seed": "--seed", "height": "--height", "width": "--width", "step_cache": "--step-cache"}
    with named_as(flags):  # speak in the CLI's flags
        check_sampling(25 if args.steps is None else args.steps, args.cfg, args.shift)
        check_number("num_images_per_prompt", args.num_images)
        for side in ("height", "width"):  # every DeepGen model works in multiples of 16; the model's own maximum is checked once it is loaded
            if getattr(args, side) is not None:
                check_size(side, getattr(args, side), 16, LIMITS[side].maximum)
        seed = resolve_seed(args.seed)
        check_number("step_cache", args.step_cache, STEP_CACHE_LIMIT)
    if seed != args.seed:
        logging.getLogger("deepgen").info("--seed -1: using the random seed %d", seed)
    return seed, check_output_file(args.out, "--out")


def keep_latents(latents, out_path: Path) -> str:
    """Save the denoised latents beside the requested output when the image could not be made; says where."""
    if latents is None:
        return ""
    from safetensors.torch import save_file

    from .user_files import check_output_folder

    path = out_path.with_name(out_path.stem + ".latents.safetensors")
    check_output_folder(path.parent)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"latents": latents.detach().float().cpu().contiguous()}, str(path))
    return f"The denoised latents were saved to {path} (DiT space; decode with DeepGenPipeline.decode_latents)."


def _speed_switches(pipe, args: argparse.Namespace, device: str) -> None:
    """Apply `generate`'s speed/memory options (order matters: offload before compile, cache before compile)."""
    if args.offload != "none":
        pipe.set_offload(args.offload, device)
    if args.compile and args.compile_cache:
        from .acceleration import load_compile_cache

        load_compile_cache(args.compile_cache)
    graphs = False if args.no_cuda_graphs or args.offload == "sequential" else "auto"
    pipe.enable_fast_path(cuda_graphs=graphs, compile="regional" if args.compile else None,
                          fuse_projections=args.compile and not args.fp8, fuse_gelu=args.compile or None,
                          vision_varlen=args.compile or None, fp8=args.fp8, fp8_encoder=args.fp8_encoder,
                          **({"step_cache": args.step_cache} if args.step_cache else {}))
    if args.vae_tiling:
        pipe.enable_vae_tiling()


def _convert(args: argparse.Namespace) -> int:
    import torch

    from .pipeline import DeepGenPipeline

    from .user_files import check_output_folder

    check_output_folder(args.out, "--out")
    dtype = getattr(torch, DTYPES[args.dtype])
    pipe = DeepGenPipeline.from_pretrained(args.model, vlm=args.vlm, diffusion=args.diffusion, config=args.config, torch_dtype=dtype)
    if args.layout == "diffusers":
        from .formats.diffusers_layout import save_diffusers_layout

        written = save_diffusers_layout(pipe.components(), args.out, dtype)
    else:
        written = pipe.save_converted(args.out, dtype)
    for path in written.values():
        print(path)
    return 0


def _dispatch(args: argparse.Namespace) -> int:
    if hasattr(args, "handler"):  # subcommands that bring their own runner (train rl, reward-server)
        return args.handler(args)
    if args.command == "train":
        from .train.cli import run_train

        return run_train(args)
    return _generate(args) if args.command == "generate" else _convert(args)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code: 0, 1 (generation failed), 2 (bad input), 130 (interrupted)."""
    from .errors import CheckpointError, GenerationError, TrainingError

    try:
        args = build_parser().parse_args(argv)
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        code = _dispatch(args)
        sys.stdout.flush()  # a closed pipe must fail here, inside the handler below, not at interpreter exit
        return code
    except (DeepGenInputError, CheckpointError, FileNotFoundError) as exc:
        print(f"deepgen: error: {exc}", file=sys.stderr)
        return 2
    except (GenerationError, TrainingError) as exc:
        print(f"deepgen: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("deepgen: interrupted; nothing more was written.", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `deepgen ... | head`: the reader left; say nothing more (Python docs' recipe)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
