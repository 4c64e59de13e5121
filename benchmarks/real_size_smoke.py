"""Real-size (random weights) smoke run on a GPU: Qwen2.5-VL-3B + SCB + SD3.5-M DiT + SD3 VAE in bf16.

Not a test and not the benchmark suite: it shows the pipeline works at full size on CUDA and prints rough
timings (median of a few runs after a warm-up) and peak memory for one 512^2 text-to-image and one 512^2
single-reference edit. Usage: python benchmarks/real_size_smoke.py [--steps 50] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from PIL import Image
from transformers import Qwen2_5_VLModel

from deepgen_core.config import DeepGenConfig
from deepgen_core.loading import DeepGenComponents, cast, load_tokenizer
from deepgen_core.models.transformer import DeepGenSD3Transformer
from deepgen_core.models.vlm import DeepGenEncoder
from deepgen_core.pipeline import DeepGenPipeline
from deepgen_core.presets import TINY_TOKENIZER_DIR, randomize_output_heads, sd3_vae, special_token_ids, vlm_config


def real_size_components(device: str, dtype: torch.dtype) -> DeepGenComponents:
    tokenizer = load_tokenizer(TINY_TOKENIZER_DIR)  # real Qwen tokenizer files cannot exist here; ids fit the real vocab
    config = vlm_config(
        special_token_ids(tokenizer),
        text=dict(vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
                  num_key_value_heads=2, rms_norm_eps=1e-6, max_position_embeddings=128000,
                  rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]}),
        vision=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=2048, window_size=112,
                    fullatt_block_indexes=[7, 15, 23, 31], patch_size=14, spatial_merge_size=2, temporal_patch_size=2, tokens_per_second=2),
    )
    torch.manual_seed(0)
    with torch.device(device):
        vlm = Qwen2_5_VLModel(config)
        vlm.config._attn_implementation = "sdpa"
        encoder = DeepGenEncoder(vlm, DeepGenConfig())
        randomize_output_heads(encoder, std=0.02)
        transformer = DeepGenSD3Transformer()  # SD3.5-Medium defaults
        vae = sd3_vae()  # SD3 VAE sizes
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    return DeepGenComponents(tokenizer, cast(encoder, dtype).eval(), cast(transformer, dtype).eval(), cast(vae, dtype).eval(), scheduler)


def timed(fn, runs: int) -> tuple[float, list[float], object]:
    fn()  # warm-up
    times, out = [], None
    torch.cuda.reset_peak_memory_stats()
    for _ in range(runs):
        torch.cuda.synchronize()
        start = time.perf_counter()
        out = fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times, out


def main() -> None:
    parser = argparse.ArgumentParser(allow_abbrev=False)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    pipe = DeepGenPipeline.from_components(real_size_components("cuda", torch.bfloat16))
    n_params = {name: sum(p.numel() for p in m.parameters()) for name, m in (("vlm", pipe.encoder.vlm), ("bridge", pipe.encoder.bridge), ("dit", pipe.transformer), ("vae", pipe.vae))}
    prompt = "a photograph of a red fox reading a newspaper on a park bench, morning light, detailed fur, " * 2
    ref = Image.effect_noise((512, 512), 64).convert("RGB")
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "params": n_params}
    for name, kwargs in (("t2i_512", {}), ("edit_512_1ref", {"image": ref})):
        call = lambda: pipe(prompt if name == "t2i_512" else "make the sky purple", height=512, width=512, num_inference_steps=args.steps,
                            guidance_scale=4.0, generator=torch.Generator().manual_seed(42), output_type="np", **kwargs)
        median, times, out = timed(call, args.runs)
        results[name] = {"median_s": round(median, 3), "runs_s": [round(t, 3) for t in times], "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
                         "finite": bool(torch.isfinite(out.latents.float()).all()), "image_shape": list(out.images.shape)}
        print(name, json.dumps(results[name]), flush=True)
    print(json.dumps(results, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
