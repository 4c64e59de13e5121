"""The vision tower's windowed attention as one varlen flash-attention call per layer (inference)."""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn


# transformers sends the Qwen2.5-VL vision tower's windowed attention through `cu_seqlens` (one varlen call per
# layer) only for implementations whose name contains "flash"; every other one splits the windows on the host
# (`lengths.tolist()`) and runs one SDPA call per window: ~25 calls and a host sync per layer for a 512^2 reference.
VISION_VARLEN_ATTENTION = "deepgen_flash_varlen_sdpa"


def _vision_varlen_attention(module, query, key, value, attention_mask=None, scaling=None, dropout=0.0,
                             cu_seq_lens_q=None, cu_seq_lens_k=None, max_length_q=None, max_length_k=None, is_causal=False, **kwargs):
    """(1, H, T, D) q/k/v of all windows -> (1, T, H, D): torch's flash-attention varlen kernel over the windows
    `cu_seq_lens_q` delimits (CUDA), else one SDPA call per window (the split transformers does)."""
    if dropout or is_causal or attention_mask is not None:
        raise ValueError("the vision varlen attention supports inference only: no dropout, mask or causal attention.")
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))  # (T, H, D)
    if q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
        from torch.nn.attention.varlen import varlen_attn

        cu_q, cu_k = cu_seq_lens_q.to(torch.int32), cu_seq_lens_k.to(torch.int32)
        out = varlen_attn(q, k, v, cu_q, cu_k, int(max_length_q), int(max_length_k), scale=scaling)
        return out[None], None
    bounds = cu_seq_lens_q.tolist()
    pieces = [F.scaled_dot_product_attention(*(t[a:b].transpose(0, 1) for t in (q, k, v)), scale=scaling).transpose(0, 1)
              for a, b in itertools.pairwise(bounds)]
    return torch.cat(pieces)[None], None


def vision_varlen_available() -> bool:
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401
    except ImportError:
        return False
    return True


def set_vision_varlen_attention(encoder: nn.Module, enabled: bool = True) -> bool:
    """Route the vision tower's windowed attention through one varlen flash-attention call per layer (`enabled`), or
    back to the default implementation. Returns whether the varlen path is now set. Equal to the per-window SDPA
    within bf16 rounding (another kernel over the same windows)."""
    from transformers import AttentionInterface

    visual = getattr(getattr(encoder, "vlm", None), "visual", None)
    if visual is None:
        return False
    config = visual.config
    if enabled:
        if not vision_varlen_available():
            return False
        AttentionInterface.register(VISION_VARLEN_ATTENTION, _vision_varlen_attention)
        if config._attn_implementation != VISION_VARLEN_ATTENTION:
            encoder.__dict__["_vision_attention_before"] = config._attn_implementation
            config._attn_implementation = VISION_VARLEN_ATTENTION
        return True
    if config._attn_implementation == VISION_VARLEN_ATTENTION:
        config._attn_implementation = encoder.__dict__.pop("_vision_attention_before", "sdpa")
    return False
