"""Stacked Channel Bridging (SCB): VLM hidden states -> DiT context sequence and pooled vector.

Reference notes §1.3-§1.4. Six VLM hidden states (deepest first) are concatenated along channels, projected
to the connector width, refined by a bidirectional SigLIP-style encoder and read out by two linear heads.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from transformers import SiglipVisionConfig
from transformers.models.siglip.modeling_siglip import SiglipEncoder

from ..config import DeepGenConfig


def build_connector(config: DeepGenConfig, attn_implementation: str = "sdpa") -> SiglipEncoder:
    """The reference `ConnectorEncoder` is exactly a SigLIP encoder (pre-LN, biased q/k/v/out projections,
    gelu-tanh MLP, no final norm), with the same parameter names, so we reuse transformers' implementation."""
    c = config.connector
    siglip = SiglipVisionConfig(
        hidden_size=c.hidden_size,
        intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_hidden_layers,
        num_attention_heads=c.num_attention_heads,
        layer_norm_eps=c.layer_norm_eps,
        hidden_act=c.hidden_act,
        attention_dropout=0.0,
    )
    siglip._attn_implementation = attn_implementation
    return SiglipEncoder(siglip)


class StackedChannelBridge(nn.Module):
    """Maps the VLM's stacked hidden states to DiT conditioning.

    Args:
        config: the DeepGen config (layer rule, connector size, output widths).
        attn_implementation: attention backend of the connector (`sdpa`, `eager`, `flash_attention_2`); the
            connector has no mask, so all backends compute the same function.
    """

    _supports_gradient_checkpointing = True

    def __init__(self, config: DeepGenConfig, attn_implementation: str = "sdpa") -> None:
        super().__init__()
        self.config = config
        width = config.connector.hidden_size
        self.proj_in = nn.Linear(config.scb_input_dim, width)
        self.connector = build_connector(config, attn_implementation)
        self.proj_pooled = nn.Linear(width, config.pooled_projection_dim)
        self.proj_context = nn.Linear(width, config.joint_attention_dim)

    def stack(self, hidden_states: Sequence[torch.Tensor]) -> torch.Tensor:
        """Concatenate the selected hidden states along channels, deepest first.

        Args:
            hidden_states: the VLM's `output_hidden_states` tuple, `num_hidden_layers + 1` tensors of (B, L, H).

        Returns:
            (B, L, H * scb_num_layers); channel block k is `hidden_states[config.scb_layer_indices[k]]`.
        """
        expected = self.config.vlm_num_hidden_layers + 1
        if len(hidden_states) != expected:
            raise ValueError(
                f"SCB expects {expected} hidden states (embeddings + {expected - 1} layers), got {len(hidden_states)}."
            )
        return torch.cat([hidden_states[i] for i in self.config.scb_layer_indices], dim=-1)

    def forward(self, stacked: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            stacked: (B, L, H * scb_num_layers) from `stack`, over the whole sequence (left pads, prompt, think
                tokens). No mask: the reference feeds pad positions to the connector and the mean (notes §2.3).

        Returns:
            `encoder_hidden_states` (B, L, joint_attention_dim) and `pooled_projections` (B, pooled_projection_dim).
        """
        hidden = self.connector(inputs_embeds=self.proj_in(stacked)).last_hidden_state
        pooled = self.proj_pooled(hidden.mean(dim=1))
        return self.proj_context(hidden), pooled
