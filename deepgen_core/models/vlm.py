"""The conditioning encoder: Qwen2.5-VL + think tokens + Stacked Channel Bridging.

Reads like the paper's figure: embed the prompt (reference images' ViT tokens in place of `<|image_pad|>`),
append the learnable think tokens, run the VLM text model once, stack six hidden states, bridge to the DiT.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from transformers import Qwen2_5_VLModel

from ..config import DeepGenConfig
from .scb import StackedChannelBridge


class DeepGenEncoder(nn.Module):
    """VLM with think tokens and the SCB bridge; outputs the DiT's `encoder_hidden_states` and pooled vector.

    Args:
        vlm: a transformers `Qwen2_5_VLModel` (no LM head: DeepGen never decodes text).
        config: DeepGen config; `vlm_hidden_size` / `vlm_num_hidden_layers` must match the VLM.
        bridge_attn_implementation: attention backend of the connector.
    """

    _supports_gradient_checkpointing = True

    def __init__(self, vlm: Qwen2_5_VLModel, config: DeepGenConfig, bridge_attn_implementation: str = "sdpa"):
        super().__init__()
        text_config = vlm.config.text_config
        if (text_config.hidden_size, text_config.num_hidden_layers) != (
            config.vlm_hidden_size,
            config.vlm_num_hidden_layers,
        ):
            raise ValueError(
                f"The VLM has hidden size {text_config.hidden_size} and {text_config.num_hidden_layers} layers, but the "
                f"DeepGen config expects {config.vlm_hidden_size} and {config.vlm_num_hidden_layers}: the checkpoint "
                "was trained on a different base VLM. Point the loader at the matching Qwen2.5-VL folder."
            )
        self.config = config
        self.vlm = vlm
        # Reference notes §1.2: N(0, 1/sqrt(hidden)) init; fed as input embeddings after the assistant header.
        self.think_tokens = nn.Parameter(torch.randn(config.num_think_tokens, config.vlm_hidden_size) * config.vlm_hidden_size**-0.5)
        self.bridge = StackedChannelBridge(config, bridge_attn_implementation)

    @property
    def image_token_id(self) -> int:
        return self.vlm.config.image_token_id

    @property
    def spatial_merge_size(self) -> int:
        return self.vlm.config.vision_config.spatial_merge_size

    @torch.no_grad()
    def encode_images(self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor) -> torch.Tensor:
        """Run the vision tower on flattened patches of one or more images.

        Args:
            pixel_values: (N_patches, C * temporal_patch * patch * patch) from `image_processing.vit_patches`.
            image_grid_thw: (num_images, 3) grids in 14-px patches.

        Returns:
            (N_patches / merge**2, vlm_hidden_size) merged vision tokens, images concatenated in order. The vision
            tower is frozen in every stage (reference notes §1.8), hence `no_grad`.
        """
        vision_dtype = self.vlm.visual.patch_embed.proj.weight.dtype
        out = self.vlm.visual(pixel_values.to(vision_dtype), grid_thw=image_grid_thw)
        return out.pooler_output

    def embed_inputs(
        self, input_ids: torch.Tensor, image_embeds: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Token embeddings with `<|image_pad|>` positions replaced, in flattened order, by `image_embeds`."""
        inputs_embeds = self.vlm.get_input_embeddings()(input_ids)
        is_image = input_ids == self.image_token_id
        n_slots = int(is_image.sum())
        n_embeds = 0 if image_embeds is None else image_embeds.shape[0]
        if n_slots != n_embeds:
            raise ValueError(f"The prompts hold {n_slots} image placeholder tokens but {n_embeds} image embeddings were given.")
        if n_slots:
            inputs_embeds = inputs_embeds.masked_scatter(is_image[..., None], image_embeds.to(inputs_embeds.dtype))
        return inputs_embeds

    def position_ids(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, image_grid_thw: torch.Tensor | None
    ) -> torch.Tensor:
        """3-D M-RoPE positions (3, B, L) of left-padded prompts, as Qwen2.5-VL's `get_rope_index` gives them; pads
        get 1 as in the reference.

        Text tokens count 1-D positions from the first real token; the tokens of an image block (a run of
        `<|image_pad|>`, with grid (t, h, w) in 14-px patches) get `start + (t_i, h_i, w_i)` over the merged grid,
        and the text after it resumes at `start + max(h, w) / merge`. transformers walks the batch sample by
        sample with host syncs (0.4 s for 512 edit prompts on an H100), so this is the same rule in a few
        vectorised ops over the whole batch (equal to `get_rope_index` by test, mixed grids and padding included).
        """
        mask = attention_mask.bool()
        image = (input_ids == self.image_token_id) & mask
        inc = (mask & ~image).long()  # every real text token advances the position by one
        local = None
        if image_grid_thw is not None and image_grid_thw.numel():
            merge = self.spatial_merge_size
            after = torch.nn.functional.pad(image[:, :-1], (1, 0))
            first = image & ~after  # the first token of each image block
            last = image & ~torch.nn.functional.pad(image[:, 1:], (0, 1))
            block = (first.flatten().cumsum(0) - 1).clamp_(min=0).view_as(input_ids)  # row-major block number
            grid = image_grid_thw.to(input_ids.device)[block]  # (B, L, 3)
            gh, gw = grid[..., 1] // merge, grid[..., 2] // merge
            index = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
            local = index - torch.cummax(torch.where(first, index, 0), dim=1).values  # token number inside its block
            local = torch.stack([local // (gh * gw), (local // gw) % gh, local % gw]) * image
            inc = inc + torch.where(last, torch.maximum(gh, gw), 0)
        base = (inc.cumsum(-1) - inc)[None].expand(3, -1, -1)  # positions used before each token
        positions = base if local is None else base + local
        return positions.masked_fill(~mask[None], 1)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        image_embeds: torch.Tensor | None = None,
        image_grid_thw: torch.Tensor | None = None,
        max_text_length: int | None = None,
        return_stacked: bool = False,
        num_think_tokens: int | None = None,
        core: Callable[[torch.Tensor, torch.Tensor | None, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> tuple[torch.Tensor, ...]:
        """Encode left-padded prompts into DiT conditioning.

        Args:
            input_ids: (B, T) templated prompts, LEFT padded (reference notes §2.1).
            attention_mask: (B, T) 1 for tokens, 0 for left padding.
            image_embeds: (sum of image tokens, H) vision tokens for every `<|image_pad|>` of the batch, row-major.
            image_grid_thw: (num image blocks in the batch, 3), in the same row-major order.
            max_text_length: training only: keep the last `max_text_length` prompt positions (notes §2.2).
            return_stacked: also return the stacked SCB input (for inspection and parity tests).
            num_think_tokens: append only the first `num_think_tokens` learned think tokens (0: none), for
                ablation; `None` (default) appends all of them, the trained behaviour.
            core: runs the text model and the bridge instead of `encode_embeddings`, with its arguments and result
                (the pipeline's CUDA-graph runner, `acceleration.EncoderGraphRunner`).

        Returns:
            `encoder_hidden_states` (B, T' + num_think_tokens, joint_attention_dim), `pooled_projections`
            (B, pooled_projection_dim), and the (B, L, H * 6) stacked hidden states if `return_stacked`.
        """
        batch = input_ids.shape[0]
        n_think = self.config.num_think_tokens if num_think_tokens is None else num_think_tokens
        if not 0 <= n_think <= self.config.num_think_tokens:
            raise ValueError(f"num_think_tokens must be in 0..{self.config.num_think_tokens} (the trained count), got {n_think}.")
        inputs_embeds = self.embed_inputs(input_ids, image_embeds)
        think = self.think_tokens[:n_think].to(inputs_embeds.dtype)[None].expand(batch, -1, -1)
        inputs_embeds = torch.cat([inputs_embeds, think], dim=1)
        # Think-token slots get the dummy id 0 (an ordinary text token for the rope index) and mask 1.
        full_ids = torch.cat([input_ids, input_ids.new_zeros(batch, n_think)], dim=1)
        full_mask = torch.cat([attention_mask, attention_mask.new_ones(batch, n_think)], dim=1).bool()
        position_ids = self.position_ids(full_ids, full_mask, image_grid_thw)

        if max_text_length is not None and full_ids.shape[1] > max_text_length + n_think:
            keep = max_text_length + n_think
            inputs_embeds, full_mask, position_ids = inputs_embeds[:, -keep:], full_mask[:, -keep:], position_ids[..., -keep:]

        # Without padding, pass no mask so that SDPA can take its causal fast path. With padding, transformers'
        # SDPA/FA2 give pad query rows (which see no key) a zero attention output, the reference semantics (§2.3).
        mask = None if bool(full_mask.all()) else full_mask
        if return_stacked:
            return self.encode_embeddings(inputs_embeds, mask, position_ids, return_stacked=True)
        # `core_call`: the training step's CUDA graphs (`train.graphs`) when installed, else the same call.
        core = core or self.__dict__.get("core_call", self.encode_embeddings)
        return core(inputs_embeds, mask, position_ids)

    def encode_embeddings(
        self, inputs_embeds: torch.Tensor, mask: torch.Tensor | None, position_ids: torch.Tensor, return_stacked: bool = False
    ) -> tuple[torch.Tensor, ...]:
        """The language model over prepared input embeddings (think tokens included), then the SCB bridge: `forward`
        after the embedding, positions and mask. `mask` is None for unpadded prompts."""
        out = self.vlm.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=mask,
            position_ids=position_ids,
            use_cache=False,
            output_hidden_states=True,
        )
        stacked = self.bridge.stack(out.hidden_states)
        encoder_hidden_states, pooled = self.bridge(stacked)
        if return_stacked:
            return encoder_hidden_states, pooled, stacked
        return encoder_hidden_states, pooled
