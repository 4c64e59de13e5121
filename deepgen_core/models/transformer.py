"""DeepGen's DiT: diffusers' SD3.5 MMDiT-X with reference latents appended to the image stream.

Reference notes §1.5. Per sample the image stream is `[target tokens ; reference 1 tokens ; ...]`, each piece
patch-embedded with the same centre-cropped sin-cos table for its own grid (no offset, no RoPE). Only the
target tokens are unpatchified. Parameter names are diffusers' own, so stock SD3 weights load unchanged.

The adaLN modulations (`linear(silu(temb))` of every block's norms and of `norm_out`, a third of the DiT's
weights) depend only on the timestep and the pooled vector, so a sampler that knows its timesteps can compute
them for all steps at once (`DeepGenSD3Transformer.modulation`) and pass one row per step (`modulation=`): the
weights are then read once per image instead of once per step (`ModulationLinear`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from diffusers import SD3Transformer2DModel
from diffusers.configuration_utils import register_to_config
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from torch import nn
from torch.nn import functional as F

ReferenceLatents = Sequence[Sequence[torch.Tensor]]


class DeepGenJointAttnProcessor:
    """SD3 joint attention (image stream + context) that also honours a key-validity mask for padded samples.

    `attention_mask` is a (B, N_image) bool vector (True = real token) or None. Context tokens are always
    valid. The reference passes a dense (B, 1, N, N) mask where pad rows attend only to themselves; here pad
    *keys* are masked for every query instead, which leaves every real token's output identical (pad rows are
    dropped at the end and never feed a real token) and costs O(N) memory instead of O(N^2). With no mask the
    call is an unmasked SDPA, so fused flash/cuDNN kernels apply (the reference always passed a mask, §9.23).
    The backend is diffusers' attention dispatcher (`model.set_attention_backend(...)`).
    """

    _attention_backend = None
    _parallel_config = None

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        batch, n_image = hidden_states.shape[:2]

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.unflatten(-1, (attn.heads, -1))  # (B, S, H, D): the dispatcher's layout

        # After `attn.fuse_projections()` one GEMM yields q, k and v (acceleration.fuse_qkv); same maths.
        if getattr(attn, "to_qkv", None) is not None and getattr(attn, "fused_projections", False):
            query, key, value = (heads(x) for x in attn.to_qkv(hidden_states).chunk(3, dim=-1))
        else:
            query, key, value = heads(attn.to_q(hidden_states)), heads(attn.to_k(hidden_states)), heads(attn.to_v(hidden_states))
        if attn.norm_q is not None:
            query, key = attn.norm_q(query), attn.norm_k(key)
        if encoder_hidden_states is not None:
            if getattr(attn, "to_added_qkv", None) is not None and getattr(attn, "fused_projections", False):
                c_query, c_key, c_value = (heads(x) for x in attn.to_added_qkv(encoder_hidden_states).chunk(3, dim=-1))
            else:
                c_query = heads(attn.add_q_proj(encoder_hidden_states))
                c_key = heads(attn.add_k_proj(encoder_hidden_states))
                c_value = heads(attn.add_v_proj(encoder_hidden_states))
            if attn.norm_added_q is not None:
                c_query, c_key = attn.norm_added_q(c_query), attn.norm_added_k(c_key)
            query, key, value = (torch.cat(p, dim=1) for p in ((query, c_query), (key, c_key), (value, c_value)))

        mask = None
        if attention_mask is not None:
            valid = attention_mask
            if encoder_hidden_states is not None:
                valid = torch.cat([valid, valid.new_ones(batch, encoder_hidden_states.shape[1])], dim=1)
            mask = valid[:, None, None, :]  # (B, 1, 1, N_keys), broadcast over heads and queries
        out = self.attention(query, key, value, mask).flatten(2).to(query.dtype)

        if encoder_hidden_states is not None:
            out, context_out = out[:, :n_image], out[:, n_image:]
            if not attn.context_pre_only:
                context_out = attn.to_add_out(context_out)
        out = attn.to_out[1](attn.to_out[0](out))
        return (out, context_out) if encoder_hidden_states is not None else out

    def attention(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """(B, S, H, D) q/k/v and an optional (B, 1, 1, S) key mask -> (B, S, H, D), via diffusers' dispatcher."""
        return dispatch_attention_fn(query, key, value, attn_mask=mask, backend=self._attention_backend, parallel_config=self._parallel_config)


class ModulationMixin:
    """Makes a Linear the `linear` of an adaLN norm (`AdaLayerNormZero`, `SD35AdaLayerNormZeroX`,
    `AdaLayerNormContinuous`) that also takes its output precomputed.

    diffusers' norms compute `self.linear(self.silu(emb))`. `install_modulation_linears` turns the norm's `silu`
    into an Identity and this class applies the SiLU itself, so a (B, in_features) embedding gives exactly the
    same `linear(silu(emb))` as before. A wider input is a row of precomputed modulations (B, W) with W !=
    in_features: the module returns its own columns `[offset, offset + out_features)`. A mixin, so that hosts
    with their own Linear class (ComfyUI's `comfy.ops`) keep it: `class X(ModulationMixin, TheirLinear)`.
    """

    offset: int = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] == self.in_features:
            return super().forward(F.silu(x))
        return x[..., self.offset : self.offset + self.out_features]


class ModulationLinear(ModulationMixin, nn.Linear):
    """`nn.Linear` with `ModulationMixin` (swapped in place: parameters and checkpoint names stay the Linear's)."""


def install_modulation_linears(norms: Sequence[nn.Module]) -> int:
    """Swap the `linear` of each norm to a `ModulationLinear` reading consecutive columns of one row (the norms
    of one block share the block's row); returns the row width."""
    width = 0
    for norm in norms:
        linear = norm.linear
        if not isinstance(linear, ModulationMixin):
            linear.__class__ = ModulationLinear
            norm.silu = nn.Identity()
        linear.offset = width
        width += linear.out_features
    if width == norms[0].linear.in_features:
        raise ValueError(f"a modulation row of width {width} cannot be told from an embedding of that width.")
    return width


def _fresh(x: torch.Tensor) -> torch.Tensor:
    """`x` as a tensor that is not a view (a 3-D Linear output is a view of its 2-D result): compiled blocks guard
    on whether an input is a view, so the first block would otherwise compile apart from the others."""
    return x if x._base is None else x.clone()


class DeepGenSD3Transformer(SD3Transformer2DModel):
    """`SD3Transformer2DModel` that accepts per-sample sizes and reference latents (the "dynamic" Kontext DiT)."""

    # Regional compilation (`compile_repeated_blocks`, see deepgen_core.acceleration) compiles these blocks.
    _repeated_blocks = ["JointTransformerBlock"]

    # diffusers reads the config from the __init__ signature, so the parent's arguments are restated here.
    @register_to_config
    def __init__(
        self,
        sample_size: int = 128,
        patch_size: int = 2,
        in_channels: int = 16,
        num_layers: int = 24,
        attention_head_dim: int = 64,
        num_attention_heads: int = 24,
        joint_attention_dim: int = 4096,
        caption_projection_dim: int = 1536,
        pooled_projection_dim: int = 2048,
        out_channels: int = 16,
        pos_embed_max_size: int = 384,
        dual_attention_layers: tuple[int, ...] = tuple(range(13)),
        qk_norm: str | None = "rms_norm",
    ) -> None:
        super().__init__(
            sample_size=sample_size,
            patch_size=patch_size,
            in_channels=in_channels,
            num_layers=num_layers,
            attention_head_dim=attention_head_dim,
            num_attention_heads=num_attention_heads,
            joint_attention_dim=joint_attention_dim,
            caption_projection_dim=caption_projection_dim,
            pooled_projection_dim=pooled_projection_dim,
            out_channels=out_channels,
            pos_embed_max_size=pos_embed_max_size,
            dual_attention_layers=dual_attention_layers,
            qk_norm=qk_norm,
        )
        self.set_attn_processor(DeepGenJointAttnProcessor())
        self._install_modulation()

    def _modulation_norms(self) -> list[list[nn.Module]]:
        """The adaLN norms fed by `temb`, grouped by the call that receives one row: per block, then norm_out."""
        return [[block.norm1, block.norm1_context] for block in self.transformer_blocks] + [[self.norm_out]]

    def _install_modulation(self) -> None:
        self._modulation_columns: list[tuple[int, int]] = []
        start = 0
        for norms in self._modulation_norms():
            width = install_modulation_linears(norms)
            self._modulation_columns.append((start, start + width))
            start += width

    def modulation(self, timestep: torch.Tensor, pooled_projections: torch.Tensor) -> torch.Tensor:
        """Every adaLN modulation of the forward for these conditions, as one (B, W) table row per sample.

        Args:
            timestep: (B,) on the 0-1000 scale.
            pooled_projections: (B, pooled_projection_dim).

        Returns:
            (B, W): pass rows as `forward(..., modulation=)`; the same numbers the forward computes itself, up to
            the rounding of a larger GEMM.
        """
        temb = self.time_text_embed(timestep, pooled_projections)
        return torch.cat([norm.linear(temb) for norms in self._modulation_norms() for norm in norms], dim=-1)

    def _patchify(self, latents: torch.Tensor) -> torch.Tensor:
        # PatchEmbed crops the sin-cos table around the centre for this grid size. Its output is a transposed view
        # (stride 1 along tokens); contiguous tokens give compiled blocks one memory layout for every input (a
        # concatenation with references is contiguous), instead of a recompile per layout.
        return self.pos_embed(latents).contiguous()

    def _embed_image_stream(
        self, hidden_states: torch.Tensor | Sequence[torch.Tensor], reference_latents: ReferenceLatents | None
    ) -> tuple[torch.Tensor, torch.Tensor | None, list[tuple[int, int]]]:
        """Tokens `[target ; refs...]` per sample, right-padded; returns tokens, validity mask (or None), grids."""
        p = self.config.patch_size
        if torch.is_tensor(hidden_states) and reference_latents is None:
            return self._patchify(hidden_states), None, [(hidden_states.shape[-2] // p, hidden_states.shape[-1] // p)] * hidden_states.shape[0]
        samples = list(hidden_states) if not torch.is_tensor(hidden_states) else list(hidden_states.unbind(0))
        refs = [list(r) for r in reference_latents] if reference_latents is not None else [[] for _ in samples]
        if len(refs) != len(samples):
            raise ValueError(f"reference_latents has {len(refs)} entries for a batch of {len(samples)} latents.")
        grids = [(x.shape[-2] // p, x.shape[-1] // p) for x in samples]
        signature = [tuple(t.shape for t in [x, *r]) for x, r in zip(samples, refs)]
        if all(s == signature[0] for s in signature):
            # Uniform batch (the usual case, CFG included): one patch-embed per piece, no padding, no mask.
            pieces = [torch.stack(samples)] + [torch.stack([r[k] for r in refs]) for k in range(len(refs[0]))]
            return torch.cat([self._patchify(x) for x in pieces], dim=1), None, grids
        streams = [torch.cat([self._patchify(t[None]) for t in [x, *r]], dim=1)[0] for x, r in zip(samples, refs)]
        lengths = torch.tensor([s.shape[0] for s in streams], device=streams[0].device)
        tokens = torch.nn.utils.rnn.pad_sequence(streams, batch_first=True)
        valid = torch.arange(tokens.shape[1], device=tokens.device)[None] < lengths[:, None]
        return tokens, valid, grids

    def _unpatchify(self, tokens: torch.Tensor, grids: list[tuple[int, int]]) -> torch.Tensor | list[torch.Tensor]:
        """(B, C, H, W) when every sample has the same grid (one op for the batch), else a list of (C, H_i, W_i)."""
        p, c = self.config.patch_size, self.out_channels
        if all(g == grids[0] for g in grids):
            (h, w), b = grids[0], tokens.shape[0]
            x = tokens[:, : h * w].reshape(b, h, w, p, p, c)
            return torch.einsum("bhwpqc->bchpwq", x).reshape(b, c, h * p, w * p)
        out = []
        for row, (h, w) in zip(tokens, grids):
            x = row[: h * w].reshape(h, w, p, p, c)
            out.append(torch.einsum("hwpqc->chpwq", x).reshape(c, h * p, w * p))
        return out

    def forward(
        self,
        hidden_states: torch.Tensor | Sequence[torch.Tensor],
        encoder_hidden_states: torch.Tensor,
        pooled_projections: torch.Tensor,
        timestep: torch.Tensor,
        reference_latents: ReferenceLatents | None = None,
        return_dict: bool = True,
        modulation: torch.Tensor | None = None,
    ) -> Transformer2DModelOutput | tuple:
        """
        Args:
            hidden_states: (B, C, H, W) noisy latents, or a list of (C, H_i, W_i) for per-sample sizes.
            encoder_hidden_states: (B, L, joint_attention_dim) SCB context.
            pooled_projections: (B, pooled_projection_dim) SCB pooled vector.
            timestep: (B,) on the 0-1000 scale.
            reference_latents: per sample, a list of clean (C, h, w) VAE latents appended to the image stream.
            modulation: (B, W) rows of `self.modulation(timestep, pooled_projections)`, computed ahead (then
                `timestep` and `pooled_projections` are not read).

        Returns:
            The velocity for the target only: (B, C, H, W) when all samples share a size, else a list.
        """
        tokens, valid, grids = self._embed_image_stream(hidden_states, reference_latents)
        if modulation is None:
            rows = [self.time_text_embed(timestep, pooled_projections)] * len(self._modulation_columns)
        else:
            # Fresh tensors, not views: a view's storage offset would make compiled blocks specialise per block.
            rows = [modulation[:, a:b].clone() for a, b in self._modulation_columns]
        context = _fresh(self.context_embedder(encoder_hidden_states))
        kwargs = {"attention_mask": valid} if valid is not None else None
        for block, temb in zip(self.transformer_blocks, rows):
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                context, tokens = self._gradient_checkpointing_func(block, tokens, context, temb, kwargs)
            else:
                context, tokens = block(hidden_states=tokens, encoder_hidden_states=context, temb=temb, joint_attention_kwargs=kwargs)
        tokens = self.proj_out(self.norm_out(tokens, rows[-1]))
        sample = self._unpatchify(tokens, grids)
        if not return_dict:
            return (sample,)
        return Transformer2DModelOutput(sample=sample)
