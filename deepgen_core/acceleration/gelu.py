"""The DiT MLPs' first GEMM with a GELU epilogue (cuBLASLt), within bf16 rounding."""

from __future__ import annotations

import torch
from diffusers.models.activations import GELU
from torch import nn


class FusedGELU(GELU):
    """diffusers' `GELU` (a Linear, then tanh-approximated GELU: the DiT MLP's first half) as one cuBLASLt GEMM with a
    bias + GELU epilogue (`torch._addmm_activation`, tanh approximation on CUDA) in CUDA inference, instead of a GEMM
    and a separate element-wise pass over the (tokens, 4 x hidden) activations. inductor keeps the op as an extern
    kernel (it does not decompose it), so it also holds under `torch.compile`. Equal within bf16 rounding (the GELU
    reads the fp32 accumulator instead of a bf16-rounded GEMM output). Everywhere else (CPU, autograd, a Linear
    replaced by an adapter or a host's own class, another dtype) it is diffusers' forward.
    """

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        proj = self.proj
        if (
            hidden_states.is_cuda
            and not torch.is_grad_enabled()
            and type(proj) is nn.Linear
            and proj.bias is not None
            and hidden_states.dtype == proj.weight.dtype
        ):
            rows = hidden_states.reshape(-1, proj.in_features)
            out = torch._addmm_activation(proj.bias, rows, proj.weight.t(), use_gelu=True)
            return out.reshape(*hidden_states.shape[:-1], proj.out_features)
        return super().forward(hidden_states)


def set_gelu_fusion(transformer: nn.Module, enabled: bool = True) -> int:
    """Switch every tanh-approximated diffusers `GELU` of the DiT (the MLPs) to `FusedGELU` (or back with
    `enabled=False`), in place: same parameters and names. Returns how many modules now have the asked class."""
    count = 0
    for module in transformer.modules():
        if isinstance(module, GELU) and module.approximate == "tanh":
            module.__class__ = FusedGELU if enabled else GELU
            count += 1
    return count
