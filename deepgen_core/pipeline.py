"""`DeepGenPipeline`: text-to-image and editing with 1..N reference images (reference notes §4).

The call is a short sequence of named steps: check inputs, prepare references, encode prompts (one VLM pass
for prompts and negatives together), prepare latents, denoise (cond + uncond in one DiT batch), decode.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image
from tqdm.auto import tqdm

from .config import DeepGenConfig
from .decoding import decode_in_slices, decode_slice_size
from .errors import DeepGenInputError, GenerationError
from .fast_path import FastPathMixin, uses_component
from .image_processing import (
    ResizePolicy,
    prepare_reference,
    tensor_to_uint8,
    vit_patches,
)
from .latents import vae_scale_factor
from .formats.diffusers_layout import is_diffusers_layout, load_diffusers_layout
from .loading import (
    DeepGenComponents,
    default_attn_implementation,
    find_release_parts,
    is_converted,
    load_converted,
    load_release,
    save_converted,
)
from .parallel.cfg import parallel_velocity
from .prompts import edit_prompt, text_to_image_prompt
from .sampling import (
    check_sde_sampler,
    euler_step,
    inference_schedule,
    predicted_x0,
    sde_step,
)
from .validation import check_number, check_prompts, check_sampling, check_size, check_think_tokens

logger = logging.getLogger(__name__)

Generator = torch.Generator | list[torch.Generator] | None
ImageInput = Image.Image | Sequence[Image.Image] | Sequence[Sequence[Image.Image]] | None
StepCallback = Callable[["DeepGenPipeline", int, torch.Tensor, dict[str, torch.Tensor]], dict[str, torch.Tensor] | None]
CALLBACK_TENSORS = ("latents", "velocity", "denoised")
TOKEN_MEMO_SIZE = 100_000  # texts whose token ids a pipeline remembers


def _step_function(sampler: str, eta: float, generator: torch.Generator | None) -> Callable[..., torch.Tensor]:
    """The per-step update, chosen once: Euler, or an SDE step whose sample is kept (its log-prob is unused)."""
    if sampler == "euler":
        return euler_step
    check_sde_sampler(sampler)
    return lambda latents, velocity, sigma, sigma_next: sde_step(sampler, velocity, latents, sigma, sigma_next, eta=eta, generator=generator).prev_latents


@dataclass
class DeepGenPipelineOutput:
    """`images`: list of PIL images, or a (B, 3, H, W) tensor in [0, 1] / a (B, H, W, 3) uint8 array; `latents`:
    the final (B, 16, H/8, W/8) latents in the VAE's scaled space."""

    images: list[Image.Image] | torch.Tensor | np.ndarray | None
    latents: torch.Tensor


@dataclass
class ReferenceTokens:
    """The frozen vision tower's output for the references of a batch: `embeds` (sum of tokens, H) for every image
    in row-major order, `grids` (n_images, 3) their patch grids, `counts[i]` the token count of each image of
    sample i. The training latent cache stores these once per image (the vision tower is frozen in every stage)."""

    embeds: torch.Tensor
    grids: torch.Tensor
    counts: list[list[int]]


@dataclass
class PromptEmbeddings:
    """DiT conditioning for B prompts and their B negatives (rows aligned)."""

    prompt_embeds: torch.Tensor
    pooled_prompt_embeds: torch.Tensor
    negative_prompt_embeds: torch.Tensor
    negative_pooled_prompt_embeds: torch.Tensor


class DeepGenPipeline(FastPathMixin):
    """DeepGen 1.0 inference. Speed/memory switches (`enable_fast_path`, `set_offload`, `enable_vae_tiling`)
    come from `FastPathMixin`; by default the DiT runs as CUDA graphs on CUDA (exact).

    Args:
        tokenizer: the Qwen2.5-VL tokenizer (left padding).
        encoder: `DeepGenEncoder` (VLM + think tokens + SCB).
        transformer: `DeepGenSD3Transformer`.
        vae: SD3 `AutoencoderKL` or `DeepGenTinyVAE` (16 channels, scaling/shift factors from its config).
        scheduler: `FlowMatchEulerDiscreteScheduler` (only its config is used; each call takes a fresh copy).
    """

    def __init__(self, tokenizer: Any, encoder: torch.nn.Module, transformer: torch.nn.Module, vae: torch.nn.Module, scheduler: Any) -> None:
        self.tokenizer = tokenizer
        self.encoder = encoder
        self.transformer = transformer
        self.vae = vae
        self.scheduler = scheduler

    # ------------------------------------------------------------------------------------------------ loading

    @classmethod
    def from_pretrained(
        cls,
        model: str | Path,
        *,
        vlm: str | Path | None = None,
        diffusion: str | Path | None = None,
        config: DeepGenConfig | str | Path | None = None,
        torch_dtype: torch.dtype = torch.bfloat16,
        device: str | torch.device | None = None,
        attn_implementation: str | None = None,
        lora_alpha: float = 128.0,
    ) -> DeepGenPipeline:
        """Load from local files only.

        Args:
            model: a folder or file written by `deepgen convert`; a DeepGen-1.0-diffusers folder (the authors'
                layout, `vlm` optionally replacing its `vlm/`); or a DeepGen checkpoint (`model.pt`, `iter_*.pth`,
                `*.safetensors`, or a folder holding one) that needs `vlm` and `diffusion`; or one folder holding
                the checkpoint and both base folders (found by `loading.find_release_parts`).
            vlm: the Qwen2.5-VL-3B-Instruct folder (release layout only).
            diffusion: the UniPic2-SD3.5M-Kontext folder with transformer/, vae/, scheduler/ (release layout only).
            config: DeepGen config or its JSON path; by default a `deepgen_config.json` beside the checkpoint,
                else inferred from the weights (attention heads: width / 64).
            torch_dtype: weights and activations dtype (the reference runs bf16).
            attn_implementation: VLM/connector attention (`sdpa`, `flash_attention_2`); default: flash-attn when
                installed on a GPU, else SDPA.
            lora_alpha: LoRA alpha for checkpoints that carry the VLM LoRA (reference: 128 with r = 64).
        """
        path = Path(model)
        if not path.exists():
            raise DeepGenInputError(f"model path {str(path)!r} does not exist; pass a converted DeepGen folder or a checkpoint.")
        if is_converted(path):
            components = load_converted(path, torch_dtype, attn_implementation)
        elif is_diffusers_layout(path):
            components = load_diffusers_layout(path, torch_dtype, attn_implementation or default_attn_implementation(), config, vlm)
        elif path.is_dir() and vlm is None and diffusion is None:
            checkpoint, vlm, diffusion = find_release_parts(path)
            components = load_release(checkpoint, vlm, diffusion, config, torch_dtype, attn_implementation, lora_alpha)
        else:
            components = load_release(path, vlm, diffusion, config, torch_dtype, attn_implementation, lora_alpha)
        pipe = cls.from_components(components)
        return pipe.to(device) if device is not None else pipe

    @classmethod
    def from_components(cls, components: DeepGenComponents) -> DeepGenPipeline:
        return cls(components.tokenizer, components.encoder, components.transformer, components.vae, components.scheduler)

    def components(self) -> DeepGenComponents:
        return DeepGenComponents(self.tokenizer, self.encoder, self.transformer, self.vae, self.scheduler)

    def save_converted(self, out_dir: str | Path, dtype: torch.dtype | None = torch.bfloat16) -> dict[str, Path]:
        """Write the converted safetensors layout (see `loading.save_converted`)."""
        return save_converted(self.components(), out_dir, dtype)

    def to(self, device: str | torch.device) -> DeepGenPipeline:
        self.set_offload("none", device)
        return self

    @property
    def device(self) -> torch.device:
        """The execution device (with offload the weights may wait elsewhere)."""
        return self._execution_device or next(self.transformer.parameters()).device

    @property
    def execution_device(self) -> torch.device | None:
        """Where inputs are placed; None: the transformer's device. Hosts that move the modules themselves
        (ComfyUI's memory manager, partial loading) set it."""
        return self._execution_device

    @execution_device.setter
    def execution_device(self, device: str | torch.device | None) -> None:
        self._execution_device = None if device is None else torch.device(device)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.transformer.parameters()).dtype

    @property
    def vae_scale_factor(self) -> int:
        if self.vae is None:  # hosts that encode/decode with their own VAE (ComfyUI): the SD3 VAE's factor
            return 8
        return vae_scale_factor(self.vae)

    @property
    def max_image_size(self) -> int:
        """Largest side the DiT's position table covers: pos_embed_max_size patches x patch x VAE factor."""
        return self.transformer.config.pos_embed_max_size * self.transformer.config.patch_size * self.vae_scale_factor

    # ------------------------------------------------------------------------------------------------ steps

    def check_inputs(self, prompts: list[str], height: int, width: int, num_inference_steps: int, guidance_scale: float, num_images_per_prompt: int,
                     output_type: str, shift: float | None = None) -> None:
        """Validate every argument before any model work (ranges: `validation.LIMITS`, docs/inputs.md)."""
        unit = self.transformer.config.patch_size * self.vae_scale_factor
        check_size("height", height, unit, self.max_image_size)
        check_size("width", width, unit, self.max_image_size)
        check_sampling(num_inference_steps, guidance_scale, shift)
        check_number("num_images_per_prompt", num_images_per_prompt)
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise DeepGenInputError("prompt must be a string or a non-empty list of strings (an empty string is a valid prompt).")
        if output_type not in ("pil", "pt", "np", "latent"):
            raise DeepGenInputError(f"output_type must be 'pil', 'pt', 'np' or 'latent', got {output_type!r}.")

    def prepare_reference_pixels(self, image: ImageInput, batch_size: int, policy: ResizePolicy, size: int) -> list[list[torch.Tensor]] | None:
        """Normalise the `image` argument to per-prompt lists of (3, H, W) tensors in [-1, 1], multiples of 32."""
        if image is None:
            return None
        if isinstance(image, Image.Image):
            per_prompt = [[image]] * batch_size
        elif len(image) and all(isinstance(i, Image.Image) for i in image):
            per_prompt = [list(image)] * batch_size
        elif all(isinstance(i, (list, tuple)) for i in image):
            if len(image) != batch_size:
                raise DeepGenInputError(f"image has reference lists for {len(image)} prompts but {batch_size} prompts were given.")
            per_prompt = [list(i) for i in image]
        else:
            raise DeepGenInputError("image must be a PIL image, a list of PIL images (references shared by all prompts) or one list per prompt.")
        if any(len(refs) == 0 for refs in per_prompt):
            raise DeepGenInputError("image contains an empty reference list; give at least one image per prompt or pass image=None.")
        pixels = [[prepare_reference(img, policy, size, name=f"reference image {j} of prompt {i}") for j, img in enumerate(refs)] for i, refs in enumerate(per_prompt)]
        for refs in pixels:
            for ref in refs:
                if max(ref.shape[-2:]) > self.max_image_size:
                    raise DeepGenInputError(f"a reference resized to {ref.shape[-1]}x{ref.shape[-2]} exceeds the DiT position table ({self.max_image_size} px); use a smaller resize size.")
        return pixels

    def _tokenize(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded (ids, mask), the tokenizer's padded batch. Token ids are memoised per text: training repeats
        its prompts, and the tokenizer's padding and tensor conversion cost ~50 ms per 512 prompts."""
        memo = self.__dict__.setdefault("_token_memo", {})
        missing = [t for t in dict.fromkeys(texts) if t not in memo]
        if missing:
            if len(memo) + len(missing) > TOKEN_MEMO_SIZE:
                memo.clear()
            memo.update(zip(missing, self.tokenizer(missing)["input_ids"]))
        rows = [memo[t] for t in texts]
        width = max(map(len, rows), default=0)
        ids = np.full((len(rows), width), self.tokenizer.pad_token_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for i, row in enumerate(rows):
            if row:
                ids[i, width - len(row):], mask[i, width - len(row):] = row, 1
        return torch.from_numpy(ids).to(self.device), torch.from_numpy(mask).to(self.device)

    def encode_reference_tokens(self, reference_pixels: list[list[torch.Tensor]]) -> ReferenceTokens:
        """One vision-tower pass over every reference of the batch (per-sample lists of (3, h, w) in [-1, 1])."""
        dtype = self.encoder.think_tokens.dtype
        patches, grids = zip(*[vit_patches(ref.to(self.device, dtype)) for refs in reference_pixels for ref in refs])
        merge = self.encoder.spatial_merge_size**2
        counts = [int(g.prod()) // merge for g in grids]
        with self.on_execution_device(self.encoder.vlm.visual):  # offload "model": only now, and alone
            embeds = self.encoder.encode_images(torch.cat(patches), torch.cat(grids))
        offsets = np.cumsum([0] + [len(r) for r in reference_pixels])
        return ReferenceTokens(embeds, torch.cat(grids), [counts[offsets[i] : offsets[i + 1]] for i in range(len(reference_pixels))])

    def encode_prompt(
        self,
        prompts: list[str],
        negative_prompts: list[str],
        reference_pixels: list[list[torch.Tensor]] | ReferenceTokens | None = None,
        max_text_length: int | None = None,
        num_think_tokens: int | None = None,
    ) -> PromptEmbeddings:
        """One VLM pass over `prompts + negative_prompts` (the reference batches them: pads depend on both, §2.3).

        With references (per-sample pixel lists, or their already encoded `ReferenceTokens`), every row gets the
        image blocks of its sample (negatives too) and the vision tower runs once over all distinct references.
        Pass no negatives for training; `max_text_length` applies the training-time left truncation (§2.2);
        `num_think_tokens` appends fewer think tokens (ablation).
        """
        if max_text_length is None:  # inference: refuse control tokens and over-long prompts before the VLM runs
            check_prompts(self.tokenizer, prompts)
            check_prompts(self.tokenizer, negative_prompts, "negative_prompt")
        num_think_tokens = check_think_tokens(num_think_tokens, self.encoder.config.num_think_tokens)
        n = len(prompts)
        image_embeds = grid = None
        template = self.encoder.config.prompt_template  # the model's (a diffusers download's prompt_template.json)
        if reference_pixels is None:
            texts = [text_to_image_prompt(p, template) for p in prompts + negative_prompts]
        else:
            refs = reference_pixels if isinstance(reference_pixels, ReferenceTokens) else self.encode_reference_tokens(reference_pixels)
            texts = [edit_prompt(p, c, template) for p, c in zip(prompts + negative_prompts, refs.counts * 2)]
            copies = 2 if negative_prompts else 1
            image_embeds, grid = torch.cat([refs.embeds] * copies), torch.cat([refs.grids] * copies)
        input_ids, attention_mask = self._tokenize(texts)
        with self.on_execution_device(self.encoder):
            context, pooled = self.encoder(
                input_ids, attention_mask, image_embeds=image_embeds, image_grid_thw=grid, max_text_length=max_text_length,
                num_think_tokens=num_think_tokens, core=self.encoder_core(),
            )
        return PromptEmbeddings(context[:n], pooled[:n], context[n:], pooled[n:])

    @uses_component("vae")
    def encode_reference_latents(self, reference_pixels: list[list[torch.Tensor]], generator: Generator = None, mode: Literal["sample", "mode"] = "sample") -> list[list[torch.Tensor]]:
        """VAE latents of each reference, shifted and scaled: (mean + std * eps - shift) * scale (§3.4).

        `sample` draws eps on the CPU from `generator` (reproducible across devices; the reference used the
        global RNG, §9.3); `mode` uses the posterior mean.
        """
        cfg = self.vae.config
        out = []
        for refs in reference_pixels:
            sample_latents = []
            for ref in refs:
                dist = self.vae.encode(ref[None].to(self.device, self.vae.dtype)).latent_dist
                z = dist.mean
                if mode == "sample":
                    gen = generator[0] if isinstance(generator, list) else generator
                    eps = randn_tensor(z.shape, generator=gen, device=torch.device("cpu"), dtype=torch.float32)
                    z = z + dist.std * eps.to(z.device, z.dtype)
                sample_latents.append(((z - cfg.shift_factor) * cfg.scaling_factor)[0])
            out.append(sample_latents)
        return out

    def prepare_latents(self, batch: int, height: int, width: int, generator: Generator) -> torch.Tensor:
        """Initial noise drawn on the CPU in fp32 (same seed, same image on any device), then moved and cast."""
        channels = self.transformer.config.in_channels
        shape = (batch, channels, height // self.vae_scale_factor, width // self.vae_scale_factor)
        noise = randn_tensor(shape, generator=generator, device=torch.device("cpu"), dtype=torch.float32)
        return noise.to(self.device, self.dtype)

    @uses_component("transformer")
    def denoise(
        self,
        latents: torch.Tensor,
        embeddings: PromptEmbeddings,
        reference_latents: list[list[torch.Tensor]] | None,
        num_inference_steps: int,
        guidance_scale: float,
        shift: float | None = None,
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        sampler: str = "euler",
        eta: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Denoise `latents`; with `guidance_scale > 1` the DiT runs once per step on the [uncond ; cond] batch.

        `sampler` is 'euler' (deterministic, the reference's inference sampler) or one of `sampling.SDE_SAMPLERS`,
        the stochastic steps of RL rollouts with noise level `eta`, drawn from `generator` (CPU generators give
        the same result on any device).
        """
        check_sampling(num_inference_steps, guidance_scale, shift, None if sampler == "euler" else eta)
        step = _step_function(sampler, eta, generator)
        timesteps, sigmas = inference_schedule(self.scheduler, num_inference_steps, shift)
        timesteps = timesteps.to(self.device)
        do_cfg = guidance_scale > 1
        e = embeddings
        # Prompts and negatives encoded together share one length and run as one [uncond ; cond] DiT batch. Ones
        # encoded apart (e.g. wired from different ComfyUI nodes) may differ in length: then two DiT calls, each
        # exactly as encoded, instead of padding that the model never saw.
        batched = do_cfg and e.negative_prompt_embeds.shape[1:] == e.prompt_embeds.shape[1:]
        if batched:
            branches = [(torch.cat([e.negative_prompt_embeds, e.prompt_embeds]), torch.cat([e.negative_pooled_prompt_embeds, e.pooled_prompt_embeds]), 2)]
        elif do_cfg:
            branches = [(e.negative_prompt_embeds, e.negative_pooled_prompt_embeds, 1), (e.prompt_embeds, e.pooled_prompt_embeds, 1)]
        else:
            branches = [(e.prompt_embeds, e.pooled_prompt_embeds, 1)]
        velocity_fn = self.velocity_function()  # CUDA graphs / eager, chosen once per loop
        velocity_fn = parallel_velocity(self, velocity_fn)  # rows split over ranks when CFG parallelism is on
        modulations = [self.modulation_schedule(timesteps, pooled) for _, pooled, _ in branches]
        self.last_step_caches = []
        branch_fns = self.cached_velocities(velocity_fn, num_inference_steps, len(branches))  # step cache: off by default
        for i in range(num_inference_steps):
            outputs = []
            for (context, pooled, copies), modulation, branch_fn in zip(branches, modulations, branch_fns):
                model_input = torch.cat([latents] * copies) if copies > 1 else latents
                refs = None if reference_latents is None else list(reference_latents) * copies
                row = modulation[i] if modulation is not None else None
                velocity = branch_fn(model_input, context, pooled, timesteps[i].expand(context.shape[0]), refs, row)
                outputs.extend(velocity.chunk(copies))
            velocity = outputs[0]
            if do_cfg:
                uncond, cond = outputs
                velocity = uncond + guidance_scale * (cond - uncond)
            if callback_on_step_end is not None:
                available = {"latents": latents, "velocity": velocity}
                if "denoised" in callback_on_step_end_tensor_inputs:
                    available["denoised"] = predicted_x0(latents, velocity, sigmas[i])
            latents = step(latents, velocity, sigmas[i], sigmas[i + 1])
            if callback_on_step_end is not None:
                available["latents"] = latents
                kwargs = {k: available[k] for k in callback_on_step_end_tensor_inputs}
                result = callback_on_step_end(self, i, timesteps[i], kwargs)
                if isinstance(result, dict) and "latents" in result:
                    latents = result["latents"]
        return latents

    @uses_component("vae")
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, 16, h, w) scaled latents -> (B, 3, 8h, 8w) pixels in about [-1, 1]."""
        cfg = self.vae.config
        return self.vae.decode(latents.to(self.vae.dtype) / cfg.scaling_factor + cfg.shift_factor).sample

    # ------------------------------------------------------------------------------------------------ call

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        image: ImageInput = None,
        negative_prompt: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 4.0,
        shift: float | None = None,
        num_images_per_prompt: int = 1,
        generator: Generator = None,
        latents: torch.Tensor | None = None,
        reference_resize: ResizePolicy = "dynamic",
        reference_size: int = 512,
        reference_latent_mode: Literal["sample", "mode"] = "sample",
        reference_latents: list[list[torch.Tensor]] | None = None,
        output_type: Literal["pil", "pt", "np", "latent"] = "pil",
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ) -> DeepGenPipelineOutput:
        """Generate (no `image`) or edit (1..N reference images per prompt).

        Args:
            prompt: one prompt or a list; an empty string is valid.
            image: references: one PIL image, a list shared by all prompts, or one list per prompt. Resized by
                `reference_resize` ('dynamic': longer side to `reference_size` if larger, sides rounded up to 32).
            negative_prompt: default `''` for text-to-image; for edits the model config's `default_edit_negative` (the
                reference's long quality negative; '' for DeepGen-Tiny).
            height, width: output size, multiples of 16. Default: the (resized) reference size for a single
                reference, else the model config's `default_image_size` (512; DeepGen-Tiny 128).
            num_inference_steps, guidance_scale, shift: Euler steps, CFG scale (> 1 enables CFG), scheduler shift
                override (default: the scheduler config's, 3.0).
            generator: CPU or any torch generator(s); noise is drawn on the CPU, so a seed gives the same image on
                any device. Reference posterior noise is drawn after the initial noise.
            latents: optional initial noise (B * num_images_per_prompt, 16, H/8, W/8).
            reference_latents: optional precomputed per-prompt DiT reference latents (skips the VAE encode).
            callback_on_step_end: `fn(pipe, step, timestep, tensors) -> dict | None`, called after each step with
                the tensors named in `callback_on_step_end_tensor_inputs` (from 'latents', 'velocity',
                'denoised'); may return {'latents': ...} to replace them, and may raise to cancel.

        Raises:
            DeepGenInputError: a bad argument, before any model work (valid ranges: `validation.LIMITS`, docs/inputs.md).
            GenerationError: non-finite final latents or a failed VAE decode; `error.latents` holds the denoised latents.
        """
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        bad = [p for p in callback_on_step_end_tensor_inputs if p not in CALLBACK_TENSORS]
        if bad:
            raise DeepGenInputError(f"callback_on_step_end_tensor_inputs {bad} are not available; choose from {list(CALLBACK_TENSORS)}.")
        check_sampling(num_inference_steps, guidance_scale, shift)
        check_number("num_images_per_prompt", num_images_per_prompt)
        if generator is not None and not isinstance(generator, (torch.Generator, list)):
            raise DeepGenInputError(f"generator must be a torch.Generator or a list of them, got {type(generator).__name__}; "
                                    "for a seed pass generator=torch.Generator('cpu').manual_seed(seed).")
        if latents is not None and not torch.isfinite(latents).all():
            raise DeepGenInputError("latents (the initial noise) contain NaN or infinite values; pass finite noise or latents=None.")
        reference_size = check_number("reference_size", reference_size, hint="The reference resizes to 512.")
        ref_pixels = self.prepare_reference_pixels(image, len(prompts), reference_resize, reference_size)
        if height is None and width is None and ref_pixels is not None and all(len(r) == 1 for r in ref_pixels) and len({r[0].shape for r in ref_pixels}) == 1:
            height, width = ref_pixels[0][0].shape[-2:]
        default = self.encoder.config.default_image_size
        height = default if height is None else height
        width = default if width is None else width
        self.check_inputs(prompts, height, width, num_inference_steps, guidance_scale, num_images_per_prompt, output_type, shift)
        default_negative = self.encoder.config.default_edit_negative if ref_pixels is not None else ""
        negatives = self._negatives(negative_prompt, default_negative, len(prompts))
        try:
            return self._run(prompts, negatives, ref_pixels, reference_latents, height, width, num_inference_steps, guidance_scale, shift, num_images_per_prompt, generator, latents, reference_latent_mode, output_type, callback_on_step_end, callback_on_step_end_tensor_inputs)
        except torch.OutOfMemoryError as exc:
            n_refs = sum(len(r) for r in ref_pixels) if ref_pixels else 0
            raise DeepGenInputError(
                f"out of memory generating {len(prompts) * num_images_per_prompt} image(s) of {width}x{height} with {n_refs} reference image(s): "
                "use fewer or smaller references (reference_size), a smaller output size or batch, or offload the VLM."
            ) from exc

    def set_progress_bar_config(self, **kwargs: Any) -> None:
        """tqdm options of the denoising and decoding bars that `__call__` shows, e.g. `disable=True` (as in diffusers)."""
        self._progress_bar_config = dict(kwargs)

    def progress_bar(self, total: int, desc: str) -> tqdm:
        return tqdm(total=total, desc=desc, **{"unit": "step" if desc == "denoising" else "image", **getattr(self, "_progress_bar_config", {})})

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        """VAE decode in memory-bounded slices; on failure the `GenerationError` carries the latents."""
        with self.on_execution_device(self.vae):
            size = decode_slice_size(latents, self.vae_scale_factor, self.vae.dtype, self.device)
            decode = functools.partial(DeepGenPipeline.decode_latents.__wrapped__, self)  # the VAE is placed once, here
            if size >= latents.shape[0]:
                return decode_in_slices(decode, latents, size)
            with self.progress_bar(latents.shape[0], "decoding") as bar:
                return decode_in_slices(decode, latents, size, bar)

    @staticmethod
    def _negatives(negative_prompt: str | list[str] | None, default: str, n: int) -> list[str]:
        if negative_prompt is None:
            return [default] * n
        if isinstance(negative_prompt, str):
            return [negative_prompt] * n
        if len(negative_prompt) != n or not all(isinstance(p, str) for p in negative_prompt):
            raise DeepGenInputError(f"negative_prompt must be a string or a list of {n} strings, got {negative_prompt!r}.")
        return list(negative_prompt)

    def _run(self, prompts, negatives, ref_pixels, reference_latents, height, width, steps, guidance_scale, shift, per_prompt, generator, latents, latent_mode, output_type, callback, callback_inputs) -> DeepGenPipelineOutput:
        total = len(prompts) * per_prompt
        embeddings = self.encode_prompt(prompts, negatives, ref_pixels)
        if latents is None:
            latents = self.prepare_latents(total, height, width, generator)
        else:
            expected = (total, self.transformer.config.in_channels, height // self.vae_scale_factor, width // self.vae_scale_factor)
            if tuple(latents.shape) != expected:
                raise DeepGenInputError(f"latents must have shape {expected}, got {tuple(latents.shape)}.")
            latents = latents.to(self.device, self.dtype)
        if reference_latents is None and ref_pixels is not None:
            reference_latents = self.encode_reference_latents(ref_pixels, generator, latent_mode)
        if per_prompt > 1:
            embeddings = PromptEmbeddings(*(t.repeat_interleave(per_prompt, dim=0) for t in vars(embeddings).values()))
            if reference_latents is not None:
                reference_latents = [refs for refs in reference_latents for _ in range(per_prompt)]
        with self.progress_bar(steps, "denoising") as bar:
            def on_step(pipe, i, t, tensors):
                bar.update(1)
                return None if callback is None else callback(pipe, i, t, tensors)

            latents = self.denoise(latents, embeddings, reference_latents, steps, guidance_scale, shift, on_step, callback_inputs)
        if not torch.isfinite(latents).all():
            raise GenerationError(
                f"the denoised latents contain NaN or infinite values (guidance_scale={guidance_scale}, shift={shift}, dtype={self.dtype}); "
                "no image was produced. Lower guidance_scale, keep the model's shift, or use bfloat16/float32 instead of float16.", latents)
        if output_type == "latent":
            return DeepGenPipelineOutput(images=None, latents=latents)
        pixels = self._decode(latents)
        if output_type == "pt":
            return DeepGenPipelineOutput(images=((pixels.float() + 1) / 2).clamp(0, 1), latents=latents)
        uint8 = tensor_to_uint8(pixels).cpu().numpy()
        if output_type == "np":
            return DeepGenPipelineOutput(images=uint8, latents=latents)
        return DeepGenPipelineOutput(images=[Image.fromarray(a) for a in uint8], latents=latents)
