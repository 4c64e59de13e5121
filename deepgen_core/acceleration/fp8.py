"""float8 (e4m3) weight storage for the DiT's block Linears and the encoder's, and fp8 GEMMs on GPUs with fp8 tensor
cores (not exact).

Why not torchao's `Float8DynamicActivationFloat8WeightConfig` (row-wise): measured on an H100 (torch 2.11, torchao
0.17, graphs without compile) it ran the 1024^2 DiT at the speed of `FP8Linear` with fp8 GEMMs (5.99 against 6.09
s/image), and it is one more dependency whose releases pin a torch version. `FP8Linear` also keeps the adaLN
modulation rows (`FP8ModulationLinear`) and a dequantising path for CPUs and for eager GPU runs, where quantising
the activations per GEMM costs more than the fp8 GEMM saves.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..models.transformer import ModulationMixin

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0  # largest finite e4m3fn value


def _fp8_gemm_available(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)


class FP8Linear(nn.Module):
    """A Linear whose weight is stored in float8 e4m3 with one fp32 scale per output channel.

    With `fp8_gemm` on GPUs with fp8 tensor cores (compute capability >= 8.9) the input is quantised per row on
    the fly and the GEMM is `torch._scaled_mm` with row-wise scales (fp8 inputs, fp32 accumulation, `dtype`
    output): that pays only under `torch.compile`, which fuses the quantisation (eager, the 1024^2 DiT took 5.9
    instead of 3.7 s on an H100). Otherwise the weight is dequantised to `dtype` for each matmul (storage saving,
    ~1 ms a step for the DiT's weights at 3 TB/s).

    Args:
        linear: the Linear to replace (its weight is read once).
        fp8_gemm: run fp8 GEMMs where the GPU has them.
    """

    def __init__(self, linear: nn.Linear, fp8_gemm: bool = True) -> None:
        super().__init__()
        weight = linear.weight.detach().float()
        scale = weight.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / FP8_MAX
        self.register_buffer("weight_fp8", (weight / scale).to(FP8_DTYPE))
        self.register_buffer("weight_scale", scale.reshape(1, -1).contiguous())  # (1, out_features) fp32
        self.bias = linear.bias
        self.dtype = linear.weight.dtype
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.use_scaled_mm = fp8_gemm and _fp8_gemm_available(weight.device) and self.in_features % 16 == 0 and self.out_features % 16 == 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., in_features) -> (..., out_features) in the original weight dtype."""
        rows = x.reshape(-1, self.in_features)
        if self.use_scaled_mm and x.is_cuda:
            out = self._scaled_mm(rows)
            if self.bias is not None:
                out = out + self.bias
        else:
            weight = self.weight_fp8.to(self.dtype) * self.weight_scale.t().to(self.dtype)
            out = F.linear(rows.to(self.dtype), weight, self.bias)
        return out.reshape(*x.shape[:-1], self.out_features)

    def _scaled_mm(self, rows: torch.Tensor) -> torch.Tensor:
        n = rows.shape[0]
        pad = (-n) % 16  # cuBLASLt fp8 wants every GEMM dimension a multiple of 16
        if pad:
            rows = F.pad(rows, (0, 0, 0, pad))
        row_scale = rows.abs().amax(dim=1, keepdim=True).float().clamp(min=1e-12) / FP8_MAX
        quantised = (rows.float() / row_scale).to(FP8_DTYPE)
        out = torch._scaled_mm(quantised, self.weight_fp8.t(), scale_a=row_scale, scale_b=self.weight_scale, out_dtype=self.dtype)
        return out[:n] if pad else out


class FP8ModulationLinear(ModulationMixin, FP8Linear):
    """An adaLN modulation Linear (`ModulationMixin`: SiLU inside, precomputed rows) with fp8 weights."""


def quantize_fp8(transformer: nn.Module, include_adaln: bool = True, fp8_gemm: bool = True) -> int:
    """Replace every Linear inside the DiT's transformer blocks by an `FP8Linear`; returns how many.

    The embedders, `norm_out` and `proj_out` stay in bf16 (tiny, and closest to the output). `include_adaln`
    also quantises the per-block adaLN modulation Linears, a third of the DiT's weights (they keep their SiLU and
    precomputed rows; with `modulation=` tables they run once per image, so fp8 there saves memory, not time).
    `fp8_gemm`: see `FP8Linear`.
    """
    count = 0
    for block in transformer.transformer_blocks:
        for name, module in list(block.named_modules()):
            for child_name, child in list(module.named_children()):
                if not isinstance(child, nn.Linear):
                    continue
                if not include_adaln and child_name == "linear" and "norm" in name:
                    continue
                if isinstance(child, ModulationMixin):
                    quantised = FP8ModulationLinear(child, fp8_gemm)
                    quantised.offset = child.offset
                else:
                    quantised = FP8Linear(child, fp8_gemm)
                setattr(module, child_name, quantised)
                count += 1
    return count


def _quantize_linears(root: nn.Module, fp8_gemm: bool) -> int:
    count = 0
    for module in list(root.modules()):
        for child_name, child in list(module.named_children()):
            if type(child) is nn.Linear:  # not a peft/host subclass: those carry their own forward
                setattr(module, child_name, FP8Linear(child, fp8_gemm))
                count += 1
    return count


def quantize_fp8_encoder(encoder: nn.Module, include_vision: bool = True, fp8_gemm: bool = False) -> int:
    """Store the Linear weights of the VLM's decoder layers (and, with `include_vision`, of the vision tower's
    blocks) in float8 like `quantize_fp8` does for the DiT; returns how many.

    The token embedding, the norms and the SCB connector stay in bf16. This is the larger half of the weights
    (the 3B VLM against the 2.5B DiT): bf16 ~7 GB -> ~3.7 GB. Not exact: each GEMM's operands are rounded to e4m3.
    Inference only (the fp8 buffers take no gradient).

    Args:
        encoder: a `DeepGenEncoder` (its `vlm.language_model.layers`, `vlm.visual.blocks`).
        include_vision: also the vision tower's blocks (edits).
        fp8_gemm: fp8 GEMMs (`FP8Linear`); off by default: the encoder runs eagerly, where they cost time.
    """
    vlm = encoder.vlm
    count = sum(_quantize_linears(layer, fp8_gemm) for layer in vlm.language_model.layers)
    visual = getattr(vlm, "visual", None)
    if include_vision and visual is not None:
        count += sum(_quantize_linears(block, fp8_gemm) for block in visual.blocks)
    return count
