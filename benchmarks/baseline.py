"""The side-by-side baseline: the reference's DiT attention maths on stock diffusers blocks, run eagerly.

The reference (`CustomJointAttnProcessor2_0`, reference notes §9.23) builds a dense (B, 1, N, N) boolean mask
in every attention call and sets its diagonal with a Python `range` index, which copies the index to the GPU
and synchronises the host three times per call (111 syncs per DiT forward, gpu-anchor-reference.md §5). This
processor reproduces exactly that per-call work, so the speed-up of the fast path is measured on the same
machine, in the same process, with the same weights. The result is numerically the plain attention (the mask
is all True when no sample is padded).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from deepgen_core.models.transformer import DeepGenJointAttnProcessor


class ReferenceMaskJointAttnProcessor(DeepGenJointAttnProcessor):
    """DeepGen joint attention with the reference's per-call dense mask and host syncs."""

    def attention(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        batch, n = query.shape[0], query.shape[1]
        valid = torch.ones(batch, n, dtype=torch.bool, device=query.device) if mask is None else mask[:, 0, 0, :]
        dense = valid[:, None, :, None] & valid[:, None, None, :]
        indices = range(n)  # a host-side index, as in the reference: H2D copies + syncs
        dense[:, 0, indices, indices] = True
        out = F.scaled_dot_product_attention(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), attn_mask=dense)
        return out.transpose(1, 2)


def use_reference_attention(transformer: torch.nn.Module, enabled: bool) -> None:
    """Install the baseline processor (True) or DeepGen's own (False) on every attention of the DiT."""
    transformer.set_attn_processor(ReferenceMaskJointAttnProcessor() if enabled else DeepGenJointAttnProcessor())
