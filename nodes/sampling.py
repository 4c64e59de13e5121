"""DeepGenSampler: the reference's flow-matching loop on DeepGen's DiT, with ComfyUI progress, previews and cancel."""

from __future__ import annotations

import torch

from ..deepgen_core.errors import DeepGenInputError
from ..deepgen_core.latents import initial_noise, to_model_space, to_vae_space
from ..deepgen_core.pipeline import PromptEmbeddings
from ..deepgen_core.sampling import SDE_SAMPLERS
from ..deepgen_core.validation import check_sampler_node
from .choices import check_choices
from ._comfy import comfy_utils, io, latent_formats, latent_preview, model_management
from .conditioning import DEEPGEN_MARKER
from .loading import DeepGenModelType
from .model import activation_estimate, compile_errors

SAMPLERS = ["euler", *SDE_SAMPLERS]


def unpack_conditioning(conditioning, name: str) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """(sequence, pooled, reference latents in VAE space) of a one-entry CONDITIONING."""
    if not isinstance(conditioning, list) or len(conditioning) != 1:
        count = len(conditioning) if isinstance(conditioning, list) else "no"
        raise DeepGenInputError(f"{name} has {count} conditioning entries; DeepGen Sampler takes exactly one (connect DeepGen VLM Encode, not a combine node).")
    sequence, extras = conditioning[0]
    if not extras.get(DEEPGEN_MARKER):
        width = sequence.shape[-1] if isinstance(sequence, torch.Tensor) else "?"
        raise DeepGenInputError(
            f"{name} is not DeepGen conditioning (a {width}-wide sequence without the {DEEPGEN_MARKER!r} marker, e.g. from CLIPTextEncode "
            f"over a CLIP/T5 model). Connect the {name} output of DeepGen VLM Encode, or CLIPTextEncode over DeepGen CLIP Loader's CLIP (stock nodes that keep the entry's keys, such as "
            f"ReferenceLatent or ConditioningZeroOut, may sit in between).")
    pooled = extras.get("pooled_output")
    if pooled is None:
        raise DeepGenInputError(f"{name} has no pooled_output: it did not come from DeepGen VLM Encode. Connect DeepGen VLM Encode's outputs.")
    return sequence, pooled, list(extras.get("reference_latents", []))


def _per_sample(tensor: torch.Tensor, batch: int, name: str) -> torch.Tensor:
    if tensor.shape[0] == batch:
        return tensor
    if tensor.shape[0] == 1:
        return tensor.expand(batch, *tensor.shape[1:])
    raise DeepGenInputError(f"{name} has batch {tensor.shape[0]} but the latent has batch {batch}; use batch 1 conditioning or match the latent batch.")


def reference_lists(references: list[torch.Tensor], batch: int) -> list[list[torch.Tensor]] | None:
    """VAE-space reference latents ((1 or B), 16, h, w) each -> per-sample lists of model-space (16, h, w)."""
    if not references:
        return None
    per_ref = [_per_sample(to_model_space(r.float()), batch, "a reference latent") for r in references]
    return [[r[i] for r in per_ref] for i in range(batch)]


def step_progress(steps: int, device: torch.device | None = None, total: int | None = None):
    """The per-step hook (`StepCallback`) that drives ComfyUI's progress bar (with a latent preview when `device`
    is given and the hook receives 'denoised') and honours Cancel. `total` > `steps` leaves room for work after
    the loop (the rollout preview's scoring)."""
    total = total or steps
    pbar = comfy_utils.ProgressBar(total)
    previewer = latent_preview.get_previewer(device, latent_formats.SD3()) if device is not None else None

    def callback(pipe, step: int, timestep, tensors: dict[str, torch.Tensor]) -> None:
        denoised = tensors.get("denoised")
        preview = previewer.decode_latent_to_preview_image("JPEG", denoised) if previewer and denoised is not None else None
        pbar.update_absolute(step + 1, total, preview)
        model_management.throw_exception_if_processing_interrupted()

    callback.pbar = pbar
    return callback


class DeepGenSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DeepGenSampler",
            display_name="DeepGen Sampler",
            category="DeepGen/sampling",
            description="Flow-matching sampling with DeepGen's DiT exactly as the reference does it (CFG with the references on both branches). Returns a LATENT in VAE space for the native VAEDecode.",
            inputs=[
                DeepGenModelType.Input("model", tooltip="From DeepGen Loader: its DiT is loaded to the GPU for sampling (about 4.5 GB in bf16)."),
                io.Conditioning.Input("positive", tooltip="From DeepGen VLM Encode, optionally through DeepGen Reference Latent / ReferenceLatent."),
                io.Conditioning.Input("negative", tooltip="From DeepGen VLM Encode. References are taken from `positive` for both branches."),
                io.Latent.Input("latent_image", tooltip="Gives the size and batch (e.g. EmptySD3LatentImage, width/height multiples of 16); its content is not used."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True, tooltip="Noise is drawn on the CPU: the same seed gives the same image on any device."),
                io.Int.Input("steps", default=50, min=1, max=1000, tooltip="Denoising steps (the reference uses 50). Time grows linearly."),
                io.Float.Input("cfg", default=4.0, min=0.0, max=30.0, step=0.1, round=0.01, tooltip="Classifier-free guidance scale; <= 1 skips the negative branch (half the DiT cost)."),
                io.Float.Input("shift", default=3.0, min=0.1, max=20.0, step=0.1, round=0.01, tooltip="Timestep shift of the flow-matching schedule (SD3.5-M / DeepGen: 3.0)."),
                io.Combo.Input("sampler", options=SAMPLERS, default="euler", tooltip="euler: deterministic, the reference's sampler. SDE samplers add noise each step (eta), as RL rollouts do."),
                io.Float.Input("eta", default=1.0, min=0.0, max=2.0, step=0.05, tooltip="Noise level of the SDE samplers (ignored by euler)."),
            ],
            outputs=[io.Latent.Output("LATENT", display_name="LATENT", tooltip="Denoised latents in VAE space (decode with VAEDecode and the SD3 VAE).")],
        )

    @classmethod
    def validate_inputs(cls, sampler: str = "euler") -> bool | str:
        return check_choices(sampler=(sampler, SAMPLERS))  # combos only (nodes/choices.py says why)

    @classmethod
    def execute(cls, model, positive, negative, latent_image: dict, seed: int, steps: int, cfg: float, shift: float,
                sampler: str = "euler", eta: float = 1.0) -> io.NodeOutput:
        check_sampler_node(seed, steps, cfg, shift, sampler, eta)  # before the DiT is loaded
        shape = tuple(latent_image["samples"].shape)
        dit = model.transformer.model.inner
        if len(shape) != 4 or shape[1] != dit.config.in_channels:
            raise DeepGenInputError(f"latent_image has shape {shape}; DeepGen needs (batch, {dit.config.in_channels}, height/8, width/8) SD3 latents (use EmptySD3LatentImage).")
        unit = dit.config.patch_size
        if shape[2] % unit or shape[3] % unit:
            raise DeepGenInputError(f"latent_image is {shape[3] * 8}x{shape[2] * 8} px; width and height must be multiples of {8 * unit}.")
        batch = shape[0]
        pos_seq, pos_pooled, references = unpack_conditioning(positive, "positive")
        neg_seq, neg_pooled, _ = unpack_conditioning(negative, "negative")
        generator = torch.Generator("cpu").manual_seed(seed)  # initial noise, then the SDE samplers' step noise
        noise = initial_noise(shape, generator, latent_image.get("batch_index"))
        refs = reference_lists(references, batch)
        tokens = 2 * batch * (shape[2] * shape[3] // unit**2 * (1 + len(references)) + pos_seq.shape[1])
        pipe = model.pipeline(model.transformer, memory_required=activation_estimate(tokens, dit.inner_dim, dit.dtype))
        device, dtype = pipe.device, pipe.dtype
        embeds = PromptEmbeddings(*(_per_sample(t, batch, name).to(device, dtype) for t, name in (
            (pos_seq, "positive"), (pos_pooled, "positive"), (neg_seq, "negative"), (neg_pooled, "negative"))))
        refs = None if refs is None else [[r.to(device, dtype) for r in sample] for sample in refs]
        with compile_errors(model):
            latents = pipe.denoise(
                noise.to(device, dtype), embeds, refs, steps, cfg, shift, step_progress(steps, device), ("latents", "denoised"),
                sampler=sampler, eta=eta, generator=generator,
            )
        return io.NodeOutput({"samples": to_vae_space(latents.float()).to(model_management.intermediate_device())})
