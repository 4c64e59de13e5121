"""Fused q/k/v projections: one GEMM per attention stream instead of three (equal within float rounding)."""

from __future__ import annotations

from torch import nn


def _fused_groups(transformer: nn.Module) -> list[tuple[nn.Linear, tuple[nn.Linear, ...]]]:
    """(fused Linear, its separate parts) of every fused attention projection."""
    groups = []
    for module in transformer.modules():
        if getattr(module, "fused_projections", False) and hasattr(module, "to_qkv"):
            groups.append((module.to_qkv, (module.to_q, module.to_k, module.to_v)))
            if getattr(module, "to_added_qkv", None) is not None:
                groups.append((module.to_added_qkv, (module.add_q_proj, module.add_k_proj, module.add_v_proj)))
    return groups


def fuse_qkv(transformer: nn.Module) -> int:
    """Fuse q/k/v (and the context stream's q/k/v) of every attention into one Linear each; returns the count.

    Uses diffusers' `Attention.fuse_projections` per attention, not the model-level `fuse_qkv_projections`: that one
    also swaps every processor for diffusers' `FusedJointAttnProcessor2_0`, dropping our masked joint attention
    (`DeepGenJointAttnProcessor`, which reads the fused weights itself when `attn.fused_projections` is set). The separate weights become views into the fused ones: no extra memory,
    checkpoint names unchanged. The fused path ignores adapters injected later into `to_q`/`to_k`/`to_v`: merge
    or attach a LoRA before fusing, or `unfuse_qkv` first (training does).
    """
    count = 0
    for module in transformer.modules():
        if hasattr(module, "fuse_projections") and getattr(module, "to_q", None) is not None:
            module.fuse_projections()
            count += 1
    reshare_fused_qkv(transformer)
    return count


def fused_qkv_views(transformer: nn.Module) -> set[int]:
    """ids of the separate q/k/v parameters that are views of fused ones (movers skip them, then reshare)."""
    return {id(p) for _, parts in _fused_groups(transformer) for part in parts for p in part.parameters()}


def reshare_fused_qkv(transformer: nn.Module) -> None:
    """Make the separate projections views of the fused ones again: no extra memory, and an in-place update of
    either (training, LoRA merge) is seen by both. Needed after anything that moves parameters one by one
    (`.to()`, offload), which would otherwise leave two copies of every q/k/v weight on the device."""
    for fused, parts in _fused_groups(transformer):
        start = 0
        for part in parts:
            rows = part.weight.shape[0]
            part.weight.data = fused.weight.data[start : start + rows]
            if part.bias is not None:
                part.bias.data = fused.bias.data[start : start + rows]
            start += rows


def unfuse_qkv(transformer: nn.Module) -> None:
    for module in transformer.modules():
        if getattr(module, "fused_projections", False):
            module.fused_projections = False
            for name in ("to_qkv", "to_added_qkv"):
                if hasattr(module, name):
                    delattr(module, name)
