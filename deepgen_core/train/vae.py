"""Training DeepGen's tiny VAE (`deepgen train vae`): a TAESD-architecture autoencoder in the SD3 latent space.

Loss per step (batch of fixed-size images in [-1, 1]):
- reconstruction: L1 + MSE between the decoded and the input pixels;
- latent regulariser: per channel of the model-space latents `(z - shift) * scale`, mean^2 + (log var)^2, so
  the DiT sees about N(0, 1) latents with the SD3 constants it already assumes;
- decoder robustness: for a fraction of the batch the decoder gets the model-space latent plus N(0, sigma^2)
  noise, so it tolerates the DiT's imprecision.
All images live on the device as one uint8 tensor (`vae_data.load_images`); the batch indices and noise of step
s come from a generator seeded by (seed, s), so a resumed run repeats the uninterrupted one.
The result, `vae.safetensors`, is in ComfyUI's TAESD layout (fp16 by default): ComfyUI's VAELoader and
DeepGen's loaders both read it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..errors import DeepGenInputError
from ..loading import load_vae_file, save_vae_file
from ..models.tiny_vae import COMFY_BLOCK_CHANNELS, DeepGenTinyVAE, tiny_taesd_vae
from .accel import build_accelerator
from .checkpointing import CheckpointManager
from .config import (
    DistributedConfig,
    OptimConfig,
    SourceConfig,
    _from_dict,
    read_recipe,
)
from .metrics import MetricsLog
from .optim import build_optimizer, build_scheduler
from .trainer import derived_seed
from .vae_data import load_images

logger = logging.getLogger(__name__)

SAVE_DTYPES = {"fp16": torch.float16, "fp32": torch.float32, "bf16": torch.bfloat16}


def _default_optim() -> OptimConfig:
    return OptimConfig(lr=5e-4, betas=(0.9, 0.99), weight_decay=0.0, warmup_steps=100, warmup_start_factor=0.01, min_lr_ratio=0.1)


@dataclass
class VAEConfig:
    """`deepgen train vae`: every field of the recipe."""

    sources: list[SourceConfig] = field(default_factory=list, metadata={"help": "image index files in the stage-1/2 formats (blip3o, caption_json, edit: input and output images, tar)"})
    image_size: int = field(default=128, metadata={"help": "side of the square training images (shorter side resized, centre crop); a multiple of 8"})
    max_images: int | None = field(default=None, metadata={"help": "use at most this many images (None: all)"})
    max_images_per_source: int | None = field(default=None, metadata={"help": "use at most this many images of each source (None: all), so a large source (an edit record gives 2+ images) does not dominate the mix"})
    holdout: int = field(default=16, metadata={"help": "images kept out of training, for the reconstruction PSNR"})
    batch_size: int = field(default=64, metadata={"help": "images per optimizer step"})
    max_steps: int = field(default=4000, metadata={"help": "optimizer steps"})
    seed: int = field(default=0, metadata={"help": "seed of the initial weights, the holdout split, batches and noise"})
    channels: int = field(default=COMFY_BLOCK_CHANNELS, metadata={"help": "block width; ComfyUI's TAESD loader needs 64 (smaller only for tests)"})
    init_vae: str | None = field(default=None, metadata={"help": "start from this tiny-VAE file (ours or a 16-channel ComfyUI TAESD file) instead of random weights"})
    train_encoder: bool = field(default=True, metadata={"help": "false: freeze the encoder of `init_vae` and train only the decoder, so the latent space stays the one a DiT was trained in and a trained DeepGen can take the new decoder"})
    l1_weight: float = field(default=1.0, metadata={"help": "weight of the pixel L1 loss"})
    mse_weight: float = field(default=1.0, metadata={"help": "weight of the pixel MSE loss"})
    latent_reg_weight: float = field(default=1e-3, metadata={"help": "weight of mean^2 + (log var)^2 per channel of the model-space latents (pulls them to N(0, 1))"})
    decoder_noise_sigma: float = field(default=0.1, metadata={"help": "std of the noise added to model-space latents before decoding (decoder robustness)"})
    decoder_noise_fraction: float = field(default=0.5, metadata={"help": "fraction of each batch decoded from noised latents"})
    optim: OptimConfig = field(default_factory=_default_optim, metadata={"help": "AdamW and the warm-up + cosine schedule"})
    mixed_precision: str = field(default="bf16", metadata={"help": "'bf16' autocast on CUDA or 'no'; the CPU always runs fp32"})
    cpu: bool = field(default=False, metadata={"help": "train on the CPU even when a GPU is present"})
    output_dir: str = field(default="runs/tiny-vae", metadata={"help": "run folder: checkpoints/, metrics.jsonl, vae.safetensors, report.json"})
    save_every: int = field(default=500, metadata={"help": "resumable checkpoint every N steps (0: only at the end)"})
    keep_last: int = field(default=2, metadata={"help": "checkpoints kept"})
    resume: str = field(default="auto", metadata={"help": "'auto' (latest checkpoint in output_dir), 'never', or a checkpoint folder"})
    log_every: int = field(default=50, metadata={"help": "write averaged metrics to metrics.jsonl every N steps (each log syncs the device)"})
    eval_every: int = field(default=500, metadata={"help": "held-out PSNR every N steps (0: only at the end)"})
    save_dtype: str = field(default="fp16", metadata={"help": f"dtype of vae.safetensors, one of {sorted(SAVE_DTYPES)}"})
    progress_bar: bool = field(default=True, metadata={"help": "tqdm progress bar"})

    def __post_init__(self) -> None:
        self.sources = [s if isinstance(s, SourceConfig) else SourceConfig(**s) for s in self.sources]
        if isinstance(self.optim, dict):
            self.optim = _from_dict(OptimConfig, dataclasses.asdict(_default_optim()) | self.optim, "optim")
        if self.mixed_precision is False:  # YAML 1.1 reads an unquoted `no` as false
            self.mixed_precision = "no"
        if not self.sources:
            raise DeepGenInputError("sources is empty; list at least one image index, e.g. sources: [{path: data/blip3o.json, format: blip3o}].")
        if self.image_size <= 0 or self.image_size % 8:
            raise DeepGenInputError(f"image_size must be a positive multiple of 8 (the VAE factor), got {self.image_size}.")
        if self.batch_size < 1 or self.max_steps < 1 or self.holdout < 1:
            raise DeepGenInputError("batch_size, max_steps and holdout must be >= 1.")
        if any(n is not None and n < 1 for n in (self.max_images, self.max_images_per_source)):
            raise DeepGenInputError(f"max_images and max_images_per_source must be >= 1 or null, got {self.max_images} and {self.max_images_per_source}.")
        if not 0 <= self.decoder_noise_fraction <= 1 or self.decoder_noise_sigma < 0:
            raise DeepGenInputError("decoder_noise_fraction must be in [0, 1] and decoder_noise_sigma >= 0.")
        if self.optim.warmup_steps >= self.max_steps:
            raise DeepGenInputError(f"optim.warmup_steps ({self.optim.warmup_steps}) must be below max_steps ({self.max_steps}).")
        if not self.train_encoder and not self.init_vae:
            raise DeepGenInputError("train_encoder: false fine-tunes the decoder of an existing VAE; give init_vae (e.g. a model folder's deepgen-vae.safetensors).")
        if self.mixed_precision not in ("bf16", "no") or self.save_dtype not in SAVE_DTYPES:
            raise DeepGenInputError(f"mixed_precision must be 'bf16' or 'no' and save_dtype one of {sorted(SAVE_DTYPES)}.")
        if self.channels != COMFY_BLOCK_CHANNELS:
            logger.warning("channels=%d: the VAE file will not load in ComfyUI (its TAESD class is 64 channels wide)", self.channels)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1, default=str)


def load_vae_config(recipe: str | Path | None, overrides: list[str] = ()) -> VAEConfig:
    """Read a YAML recipe (fields of `VAEConfig`), apply `key.sub=value` overrides, validate."""
    return _from_dict(VAEConfig, read_recipe(recipe, overrides, "train/recipes/tiny/vae.yaml"), "the VAE recipe")


# ------------------------------------------------------------------------------------------------ losses


def latent_regulariser(latents: torch.Tensor) -> torch.Tensor:
    """mean over channels of (mean_c^2 + (log var_c)^2), statistics over batch and space: 0 exactly when every
    channel of the (B, C, h, w) latents has zero mean and unit variance."""
    flat = latents.float().transpose(0, 1).flatten(1)
    return (flat.mean(dim=1).square() + torch.log(flat.var(dim=1) + 1e-6).square()).mean()


def vae_loss(vae: DeepGenTinyVAE, pixels: torch.Tensor, latent_noise: torch.Tensor, noisy: int, config: VAEConfig) -> dict[str, torch.Tensor]:
    """The training loss of one batch.

    Args:
        vae: the tiny VAE (its config's scaling/shift define model space).
        pixels: (B, 3, H, W) in [-1, 1].
        latent_noise: (B, C, H/8, W/8) standard normal draws; the first `noisy` samples get
            `decoder_noise_sigma` times it added to their model-space latents.
        noisy: how many samples decode noised latents.
        config: the loss weights.

    Returns:
        `loss` and its parts (`l1`, `mse`, `latent_reg`), plus `latent_mean` / `latent_std` of the model-space latents.
    """
    scale, shift = vae.config.scaling_factor, vae.config.shift_factor
    model_latents = (vae.encoder(pixels) - shift) * scale
    mask = (torch.arange(pixels.shape[0], device=pixels.device) < noisy).view(-1, 1, 1, 1)
    noised = model_latents + config.decoder_noise_sigma * latent_noise * mask
    recon = vae.decoder(noised / scale + shift).float()
    target = pixels.float()
    l1, mse = (recon - target).abs().mean(), (recon - target).square().mean()
    reg = latent_regulariser(model_latents)
    loss = config.l1_weight * l1 + config.mse_weight * mse + config.latent_reg_weight * reg
    stats = model_latents.detach().float()
    return {"loss": loss, "l1": l1.detach(), "mse": mse.detach(), "latent_reg": reg.detach(), "latent_mean": stats.mean(), "latent_std": stats.std()}


@torch.no_grad()
def reconstruction_psnr(vae: DeepGenTinyVAE, images: torch.Tensor, batch_size: int = 64) -> float:
    """Mean per-image PSNR (dB, pixels in [0, 1], decoded output clamped) of encode -> decode.

    Args:
        images: (N, 3, H, W) uint8.
    """
    was_training = vae.training
    vae.eval()
    scores = []
    dtype = next(vae.parameters()).dtype
    for chunk in images.split(batch_size):
        pixels = to_pixels(chunk.to(next(vae.parameters()).device), dtype)
        recon = vae.decode(vae.encode(pixels).latents).sample.float().clamp(-1, 1)
        mse = ((recon - pixels.float()) / 2).square().flatten(1).mean(dim=1)
        scores.append(10 * torch.log10(1 / mse.clamp_min(1e-10)))
    vae.train(was_training)
    return torch.cat(scores).mean().item()


def to_pixels(images: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(B, 3, H, W) uint8 -> [-1, 1] in `dtype`."""
    return images.to(dtype).div(127.5).sub(1.0)


# ------------------------------------------------------------------------------------------------ loop


@dataclass
class VAETrainResult:
    output_dir: Path
    step: int
    losses: list[float] = field(default_factory=list)
    vae_file: Path | None = None
    holdout_psnr: float | None = None


def split_holdout(images: torch.Tensor, holdout: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, held-out) by a seeded permutation; at least one image stays for training."""
    if images.shape[0] <= holdout:
        raise DeepGenInputError(f"only {images.shape[0]} images for holdout={holdout}; add images or lower holdout.")
    order = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(seed))
    return images[order[holdout:]], images[order[:holdout]]


def build_vae(config: VAEConfig) -> DeepGenTinyVAE:
    if config.init_vae:
        vae = load_vae_file(config.init_vae, torch.float32)
        if not isinstance(vae, DeepGenTinyVAE):
            raise DeepGenInputError(f"init_vae {config.init_vae} is not a tiny (TAESD-layout) VAE; the VAE trainer only trains the tiny VAE.")
        return vae.train()
    return tiny_taesd_vae(config.seed, config.channels).train()


def _train_step(vae, optimizer, scheduler, images: torch.Tensor, step: int, config: VAEConfig, autocast) -> dict[str, torch.Tensor]:
    """One optimizer step; the batch and the latent noise are a pure function of (seed, step)."""
    device = images.device
    gen = torch.Generator(device).manual_seed(derived_seed(config.seed, step))
    index = torch.randint(images.shape[0], (config.batch_size,), generator=gen, device=device)
    pixels = to_pixels(images[index]).contiguous(memory_format=torch.channels_last)
    side = config.image_size // 8
    noise = torch.randn((config.batch_size, vae.config.latent_channels, side, side), generator=gen, device=device)
    with autocast:
        out = vae_loss(vae, pixels, noise, round(config.decoder_noise_fraction * config.batch_size), config)
    out["loss"].backward()
    if config.optim.grad_clip > 0:
        out["grad_norm"] = torch.nn.utils.clip_grad_norm_(vae.parameters(), config.optim.grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    scheduler.step()
    return {k: v.detach().float() for k, v in out.items()}


def train_vae(config: VAEConfig, images: torch.Tensor | None = None) -> VAETrainResult:
    """Train the tiny VAE; writes checkpoints, `metrics.jsonl`, `vae.safetensors` and `report.json` in
    `config.output_dir`.

    Args:
        config: the validated config.
        images: optional (N, 3, S, S) uint8 images instead of reading `config.sources` (tests, benchmarks).
    Returns:
        the final step, the logged losses, the VAE file and the held-out PSNR of the saved file.
    """
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(config.to_json())
    logger.info("VAE training config:\n%s", config.to_json())
    on_cpu = config.cpu or not torch.cuda.is_available()
    acc = build_accelerator(DistributedConfig(mixed_precision="no", cpu=on_cpu), config.batch_size, 1, config.optim.grad_clip, out)
    if acc.num_processes > 1:
        raise DeepGenInputError("the VAE trainer runs on one process; launch it without accelerate/torchrun.")
    if images is None:
        images = load_images(config.sources, config.image_size, max_images=config.max_images, per_source=config.max_images_per_source)
    train_images, held_out = split_holdout(images, config.holdout, config.seed)
    train_images, held_out = train_images.to(acc.device), held_out.to(acc.device)
    logger.info("%d training and %d held-out images of %dx%d on %s", len(train_images), len(held_out), config.image_size, config.image_size, acc.device)
    vae = build_vae(config).to(acc.device, memory_format=torch.channels_last)
    if not config.train_encoder:
        vae.encoder.requires_grad_(False)
    optimizer = build_optimizer(vae, config.optim)
    scheduler = build_scheduler(optimizer, config.optim, config.max_steps)
    ckpt = CheckpointManager(out / "checkpoints", acc, config.keep_last)
    ckpt.remove_partial()
    step = _resume(ckpt, config, vae, optimizer, scheduler)
    use_bf16 = config.mixed_precision == "bf16" and acc.device.type == "cuda"
    autocast = torch.autocast(acc.device.type, dtype=torch.bfloat16, enabled=use_bf16)
    metrics = MetricsLog(acc, out / "metrics.jsonl")
    metrics.truncate(step)  # steps after the checkpoint are replayed: their old records go
    result = VAETrainResult(out, step)
    sums: dict[str, torch.Tensor] = {}
    bar = tqdm(total=config.max_steps, initial=step, desc="vae", disable=not config.progress_bar)
    while step < config.max_steps:
        lr = scheduler.get_last_lr()[0]
        values = _train_step(vae, optimizer, scheduler, train_images, step, config, autocast)
        step += 1
        for key, value in {**values, "_count": 1}.items():
            sums[key] = sums.get(key, 0) + value
        bar.update(1)
        if step % config.log_every == 0 or step == config.max_steps:
            _log(metrics, sums, step, lr, result, bar)
        if config.eval_every and step % config.eval_every == 0:
            psnr = reconstruction_psnr(vae, held_out)
            metrics.record_step(step, {"psnr/holdout": psnr})
            logger.info("step %d: held-out PSNR %.2f dB", step, psnr)
        if (config.save_every and step % config.save_every == 0) or step == config.max_steps:
            ckpt.save(step, vae, optimizer, scheduler, {"images": len(train_images), "batch_size": config.batch_size})
    bar.close()
    result.step = step
    result.vae_file, result.holdout_psnr = _finish(vae, held_out, config, out)
    return result


def _resume(ckpt: CheckpointManager, config: VAEConfig, vae, optimizer, scheduler) -> int:
    if config.resume == "never":
        return 0
    folder = ckpt.latest() if config.resume == "auto" else Path(config.resume)
    if folder is None:
        return 0
    return int(ckpt.load(folder, vae, optimizer, scheduler)["step"])


def _log(metrics: MetricsLog, sums: dict[str, torch.Tensor], step: int, lr: float, result: VAETrainResult, bar) -> None:
    """Average the step values accumulated since the last log (one device sync), write them, reset the sums."""
    count = sums.pop("_count")
    values = {k: (v / count).item() for k, v in sums.items()}
    values["lr"] = lr
    if not math.isfinite(values["loss"]):
        raise DeepGenInputError(f"VAE training diverged: the loss is {values['loss']} by step {step} (lr {lr:.3g}); lower optim.lr "
                                f"or raise optim.warmup_steps, and start again with resume=never.")
    values["psnr/train"] = 10 * math.log10(4 / max(values["mse"], 1e-10))  # [-1, 1] pixels: peak-to-peak 2
    metrics.record_step(step, values)
    result.losses.append(values["loss"])
    bar.set_postfix(loss=f"{values['loss']:.4f}", psnr=f"{values['psnr/train']:.1f}")
    sums.clear()


def _finish(vae: DeepGenTinyVAE, held_out: torch.Tensor, config: VAEConfig, out: Path) -> tuple[Path, float]:
    """Write `vae.safetensors` (TAESD layout, `save_dtype`), reload it and report its held-out PSNR."""
    vae.eval()
    path = save_vae_file(vae, out / "vae.safetensors", SAVE_DTYPES[config.save_dtype])
    saved = load_vae_file(path, torch.float32).to(held_out.device)
    report = {"holdout_psnr_db": reconstruction_psnr(saved, held_out), "holdout_psnr_db_training_weights": reconstruction_psnr(vae.float(), held_out),
              "holdout_images": len(held_out), "vae_file": str(path), "dtype": config.save_dtype}
    (out / "report.json").write_text(json.dumps(report, indent=1))
    logger.info("wrote %s: held-out PSNR %.2f dB (%d images)", path, report["holdout_psnr_db"], len(held_out))
    return path, report["holdout_psnr_db"]
