"""Tiny presets: the real DeepGen classes at toy sizes, for tests, demos and the embedded default model.

`tiny_components(seed)` builds a complete model with seeded random weights in well under a second on a CPU,
with the bundled byte-level BPE tokenizer (Qwen special tokens). Random weights make noise-like images; the
trained DeepGen-Tiny replaces them once it ships.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLModel

from .config import ConnectorConfig, DeepGenConfig
from .latents import SD3_SCALING_FACTOR, SD3_SHIFT_FACTOR
from .loading import DeepGenComponents, cast, load_tokenizer
from .models.transformer import DeepGenSD3Transformer
from .models.vlm import DeepGenEncoder

TINY_TOKENIZER_DIR = Path(__file__).parent / "assets" / "tiny-tokenizer"


def special_token_ids(tokenizer) -> dict[str, int]:
    return {name: tokenizer.convert_tokens_to_ids(tok) for name, tok in (
        ("pad", "<|endoftext|>"), ("eos", "<|im_end|>"), ("image", "<|image_pad|>"), ("video", "<|video_pad|>"),
        ("vision_start", "<|vision_start|>"), ("vision_end", "<|vision_end|>"))}


def vlm_config(token_ids: dict[str, int], text: dict, vision: dict) -> Qwen2_5_VLConfig:
    """A Qwen2.5-VL config with the tokenizer's special ids; `text` / `vision` hold the sizes."""
    text = dict(text, bos_token_id=token_ids["pad"], eos_token_id=token_ids["eos"], pad_token_id=token_ids["pad"], tie_word_embeddings=True)
    return Qwen2_5_VLConfig(
        text_config=text, vision_config=vision, image_token_id=token_ids["image"], video_token_id=token_ids["video"],
        vision_start_token_id=token_ids["vision_start"], vision_end_token_id=token_ids["vision_end"], tie_word_embeddings=True,
    )


def tiny_vlm_config(vocab_size: int, token_ids: dict[str, int], num_layers: int = 12, hidden: int = 64) -> Qwen2_5_VLConfig:
    text = dict(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=num_layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096, rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
    )
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=hidden, window_size=56, fullatt_block_indexes=[1])
    return vlm_config(token_ids, text, vision)


def tiny_deepgen_config(num_layers: int = 12, hidden: int = 64) -> DeepGenConfig:
    return DeepGenConfig(
        num_think_tokens=16, vlm_hidden_size=hidden, vlm_num_hidden_layers=num_layers, scb_layer_stride=6,
        scb_num_layers=len(range(num_layers - 1, 0, -6)),
        connector=ConnectorConfig(hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4),
        pooled_projection_dim=40, joint_attention_dim=48,
    )


def tiny_transformer() -> DeepGenSD3Transformer:
    return DeepGenSD3Transformer(
        sample_size=16, patch_size=2, in_channels=16, num_layers=3, attention_head_dim=16, num_attention_heads=4,
        joint_attention_dim=48, caption_projection_dim=64, pooled_projection_dim=40, out_channels=16,
        pos_embed_max_size=96, dual_attention_layers=(0, 1), qk_norm="rms_norm",
    )


def sd3_vae(block_out_channels: tuple[int, ...] = (128, 256, 512, 512), layers_per_block: int = 2, norm_num_groups: int = 32) -> AutoencoderKL:
    """An SD3-style VAE (16 latent channels, no quant convs, SD3 scaling/shift); defaults are the real sizes."""
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=16, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=block_out_channels, layers_per_block=layers_per_block,
        norm_num_groups=norm_num_groups, scaling_factor=SD3_SCALING_FACTOR, shift_factor=SD3_SHIFT_FACTOR, use_quant_conv=False, use_post_quant_conv=False,
    )


def tiny_vae() -> AutoencoderKL:
    return sd3_vae(block_out_channels=(8, 16, 16, 16), layers_per_block=1, norm_num_groups=4)


def randomize_output_heads(encoder: DeepGenEncoder, std: float) -> None:
    """The reference zero-initialises the pooled/context heads; random weights need them non-zero so that every
    path carries signal (a loaded checkpoint makes them non-zero too)."""
    for head in (encoder.bridge.proj_pooled, encoder.bridge.proj_context):
        torch.nn.init.normal_(head.weight, std=std)


def tiny_components(seed: int = 0, dtype: torch.dtype = torch.float32) -> DeepGenComponents:
    """A complete tiny DeepGen with seeded random weights (global RNG state is restored afterwards)."""
    tokenizer = load_tokenizer(TINY_TOKENIZER_DIR)
    ids = special_token_ids(tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vlm = Qwen2_5_VLModel(tiny_vlm_config(len(tokenizer), ids))
        vlm.config._attn_implementation = "sdpa"
        encoder = DeepGenEncoder(vlm, tiny_deepgen_config())
        randomize_output_heads(encoder, std=0.05)
        transformer, vae = tiny_transformer(), tiny_vae()
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    return DeepGenComponents(tokenizer, cast(encoder, dtype).eval(), cast(transformer, dtype).eval(), cast(vae, dtype).eval(), scheduler)
