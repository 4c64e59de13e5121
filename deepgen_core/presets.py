"""Tiny presets: the real DeepGen classes at toy sizes.

- `tiny_components(seed)`: a complete model with seeded random weights, built in well under a second on a CPU,
  for tests (the reference fixtures use these sizes).
- `deepgen_tiny_architecture(seed, vae)`: the untrained DeepGen-Tiny (the embedded default model's sizes:
  Qwen2.5-VL-style VLM with 6 text layers of width 128 and a 2-block vision tower, 16 think tokens, SCB over 3
  hidden states, an 8-block SD3-style DiT of width 128 at 128 px, a 16-channel TAESD-layout VAE), the starting
  point of `train/recipes/tiny/`.
Both use the bundled byte-level BPE tokenizer (Qwen special tokens).
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLModel

from .config import ConnectorConfig, DeepGenConfig
from .latents import SD3_SCALING_FACTOR, SD3_SHIFT_FACTOR
from .loading import TRANSFORMER_FILE, DeepGenComponents, cast, load_tokenizer
from .models.transformer import DeepGenSD3Transformer
from .models.vlm import DeepGenEncoder

TINY_TOKENIZER_DIR = Path(__file__).parent / "assets" / "tiny-tokenizer"
DEEPGEN_TINY_DIR = Path(__file__).parent / "assets" / "deepgen-tiny"  # the trained, embedded default model


def deepgen_tiny_dir() -> Path:
    """The embedded DeepGen-Tiny (converted layout, fp16); a clear error when the install lacks it."""
    if not (DEEPGEN_TINY_DIR / TRANSFORMER_FILE).is_file():
        raise FileNotFoundError(
            f"the embedded DeepGen-Tiny is missing from {DEEPGEN_TINY_DIR}; reinstall the package (its weights ship "
            "with it) or pass --model with a DeepGen checkpoint."
        )
    return DEEPGEN_TINY_DIR


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
    text = {
        "vocab_size": vocab_size, "hidden_size": hidden, "intermediate_size": 2 * hidden, "num_hidden_layers": num_layers,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 4096, "rms_norm_eps": 1e-6,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
    }
    vision = {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": hidden, "window_size": 56, "fullatt_block_indexes": [1]}
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


TINY_IMAGE_SIZE = 128  # DeepGen-Tiny's training and default output size


def deepgen_tiny_vlm_config(vocab_size: int, token_ids: dict[str, int]) -> Qwen2_5_VLConfig:
    text = {
        "vocab_size": vocab_size, "hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 6, "num_attention_heads": 4,
        "num_key_value_heads": 2, "max_position_embeddings": 4096, "rms_norm_eps": 1e-6,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [4, 6, 6]},
    }
    vision = {"depth": 2, "hidden_size": 64, "intermediate_size": 128, "num_heads": 2, "out_hidden_size": 128, "window_size": 56, "fullatt_block_indexes": [1]}
    return vlm_config(token_ids, text, vision)


def deepgen_tiny_config() -> DeepGenConfig:
    return DeepGenConfig(
        num_think_tokens=16, vlm_hidden_size=128, vlm_num_hidden_layers=6, scb_layer_stride=2, scb_num_layers=3,
        connector=ConnectorConfig(hidden_size=128, intermediate_size=384, num_hidden_layers=2, num_attention_heads=4),
        pooled_projection_dim=128, joint_attention_dim=128, default_image_size=TINY_IMAGE_SIZE, edit_negative_prompt="",
    )


def deepgen_tiny_transformer() -> DeepGenSD3Transformer:
    return DeepGenSD3Transformer(
        sample_size=TINY_IMAGE_SIZE // 8, patch_size=2, in_channels=16, num_layers=8, attention_head_dim=32, num_attention_heads=4,
        joint_attention_dim=128, caption_projection_dim=128, pooled_projection_dim=128, out_channels=16,
        pos_embed_max_size=32, dual_attention_layers=(0, 1, 2), qk_norm="rms_norm",
    )


def deepgen_tiny_architecture(seed: int = 0, vae: torch.nn.Module | None = None) -> DeepGenComponents:
    """DeepGen-Tiny with fresh weights (fp32): the VLM, think tokens, bridge and DiT are initialised from `seed`;
    `vae` is the trained tiny VAE (default: a random one of the shipping layout).

    The reference starts from a pretrained VLM and DiT; DeepGen-Tiny has neither, so its recipe trains the DiT
    from scratch in stage 1 and keeps the randomly initialised VLM frozen (a fixed random feature extractor of
    the prompt and the reference images), adapted only by stage 2's LoRA.
    """
    tokenizer = load_tokenizer(TINY_TOKENIZER_DIR)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vlm = Qwen2_5_VLModel(deepgen_tiny_vlm_config(len(tokenizer), special_token_ids(tokenizer)))
        vlm.config._attn_implementation = "sdpa"
        encoder = DeepGenEncoder(vlm, deepgen_tiny_config())
        transformer = deepgen_tiny_transformer()
        if vae is None:
            from .models.tiny_vae import tiny_taesd_vae

            vae = tiny_taesd_vae(seed)
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    return DeepGenComponents(tokenizer, encoder.float(), transformer.float(), vae.float(), scheduler)


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
