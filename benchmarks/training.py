"""Training-side scenarios of the benchmark: a stage-2 SFT step and an RL rollout.

Written as plain loops over `deepgen_core.train.objectives` and the pipeline's `denoise`, because the project's
trainer and RL code are developed separately. What the stage-2 step does (reference notes §5.1-5.3): VAE-encode
the targets (frozen), run the VLM with the think tokens (frozen base weights, gradients flow to the think
tokens), the SCB bridge and the DiT with gradients, flow-matching loss, backward, clip 1.0, AdamW. The VLM LoRA
of the real stage 2 is not attached here (its FLOPs are small; its backward through the VLM is counted).
"""

from __future__ import annotations

import statistics

import torch

from deepgen_core.prompts import text_to_image_prompt
from deepgen_core.train.objectives import FlowMatchingTargets, flow_matching_loss, predict_velocity, training_schedule

from measure import PEAK_TFLOPS, StepCounter, dit_forward_flops, image_tokens, timed


def _vlm_text_params(encoder) -> int:
    lm = encoder.vlm.language_model
    return sum(p.numel() for p in lm.parameters()) - lm.embed_tokens.weight.numel()


def stage2_step(pipe, micro_batch: int = 4, size: int = 512, checkpointing: bool = False, runs: int = 5) -> dict:
    """Samples/s and model-FLOP utilisation of one stage-2 optimisation step (bf16 weights and AdamW states).

    The learning rate is 0 so that the weights stay bit-identical for the later benchmark phases; the
    optimizer still performs its full update arithmetic.
    """
    encoder, dit, vae = pipe.encoder, pipe.transformer, pipe.vae
    trainable = [*dit.parameters(), *encoder.bridge.parameters(), encoder.think_tokens]
    for p in trainable:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(trainable, lr=0.0, betas=(0.9, 0.95), weight_decay=0.05, fused=True)
    if checkpointing:
        dit.enable_gradient_checkpointing()
        encoder.vlm.language_model.gradient_checkpointing_enable()
    dit.train()
    generator = torch.Generator(device="cuda").manual_seed(0)
    images = torch.rand(micro_batch, 3, size, size, device="cuda", generator=generator).mul(2).sub(1).to(vae.dtype)
    ids, mask = pipe._tokenize([text_to_image_prompt("a red fox reading a newspaper on a park bench, morning light")] * micro_batch)
    cfg = vae.config

    def step() -> None:
        with torch.no_grad():
            latents = (vae.encode(images).latent_dist.sample(generator) - cfg.shift_factor) * cfg.scaling_factor
        context, pooled = encoder(ids, mask)
        timesteps, sigmas = training_schedule(pipe.scheduler, torch.rand(micro_batch), latents.dtype)
        targets = FlowMatchingTargets(list(latents), list(torch.randn_like(latents)), timesteps.cuda(), sigmas.cuda())
        loss = flow_matching_loss(predict_velocity(dit, targets, context, pooled), targets.latents, targets.noise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    torch.cuda.reset_peak_memory_stats()
    try:
        times, first = timed(step, runs, warmup=2)
    finally:
        dit.eval()
        if checkpointing:
            dit.disable_gradient_checkpointing()
            encoder.vlm.language_model.gradient_checkpointing_disable()
        for p in trainable:
            p.requires_grad_(False)

    n_txt = ids.shape[1] + encoder.config.num_think_tokens
    conn = sum(p.numel() for p in encoder.bridge.parameters())
    flops = micro_batch * (3 * dit_forward_flops(dit.config, image_tokens(size, 0), n_txt) + 4 * _vlm_text_params(encoder) * n_txt + 6 * conn * n_txt)
    median = statistics.median(times)
    return {"s_per_step": median, "min_s": min(times), "max_s": max(times), "runs": runs, "first_call_s": first,
            "samples_per_s": micro_batch / median, "tflops": flops / median / 1e12, "mfu_pct": 100 * flops / median / (PEAK_TFLOPS * 1e12),
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30, "n_txt": n_txt}


def rl_rollout(pipe, group: int = 8, size: int = 512, steps: int = 50, runs: int = 5) -> dict:
    """One GRPO-style rollout group: one prompt, `group` images from the same initial noise, no CFG, the whole
    trajectory recorded on the GPU through the per-step callback, then decoded."""
    trajectory = torch.empty(steps + 1, group, 16, size // 8, size // 8, device="cuda", dtype=pipe.dtype)
    counter = StepCounter()

    def record(p, i, t, tensors):
        counter(p, i, t, tensors)
        trajectory[i + 1].copy_(tensors["latents"])

    def rollout() -> None:
        with torch.no_grad():
            embeddings = pipe.encode_prompt(["a red fox reading a newspaper on a park bench"] * group, [])
            latents = pipe.prepare_latents(1, size, size, torch.Generator().manual_seed(0)).expand(group, -1, -1, -1).contiguous()
            trajectory[0].copy_(latents)
            final = pipe.denoise(latents, embeddings, None, steps, 1.0, callback_on_step_end=record)
            pipe.decode_latents(final)

    torch.cuda.reset_peak_memory_stats()
    times, first = timed(rollout, runs, warmup=1)
    median = statistics.median(times)
    return {"s_per_rollout": median, "min_s": min(times), "max_s": max(times), "runs": runs, "first_call_s": first,
            "images_per_s": group / median, "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
            "callback_calls_ok": counter.calls == steps * (runs + 1)}
