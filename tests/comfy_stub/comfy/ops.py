"""Stand-in for `comfy.ops`: the layer families ComfyUI builds models with. `disable_weight_init`: the torch layers
plus the flag the partial loader reads; `manual_cast`: weights stored in one dtype (e.g. fp8) and cast to the
input's dtype at each call; `pick_operations` chooses between them as ComfyUI does on a CPU (no fp8 matmul)."""

import torch
from torch.nn import functional as F


class CastWeightBiasOp:
    comfy_cast_weights = False
    weight_function = []  # noqa: RUF012 - ComfyUI's class attribute
    bias_function = []  # noqa: RUF012


def cast_bias_weight(layer, input):
    weight = layer.weight.to(input.device, input.dtype)
    bias = layer.bias.to(input.device, input.dtype) if getattr(layer, "bias", None) is not None else None
    return weight, bias


class disable_weight_init:
    class Linear(torch.nn.Linear, CastWeightBiasOp):
        def forward(self, input):
            if self.comfy_cast_weights:
                return F.linear(input, *cast_bias_weight(self, input))
            return super().forward(input)

    class Conv2d(torch.nn.Conv2d, CastWeightBiasOp):
        def forward(self, input):
            if self.comfy_cast_weights:
                return self._conv_forward(input, *cast_bias_weight(self, input))
            return super().forward(input)

    class LayerNorm(torch.nn.LayerNorm, CastWeightBiasOp):
        def forward(self, input):
            if self.comfy_cast_weights and self.weight is not None:
                return F.layer_norm(input, self.normalized_shape, *cast_bias_weight(self, input), self.eps)
            return super().forward(input)

    class GroupNorm(torch.nn.GroupNorm, CastWeightBiasOp):
        pass

    class Embedding(torch.nn.Embedding, CastWeightBiasOp):
        pass


class manual_cast(disable_weight_init):
    class Linear(disable_weight_init.Linear):
        comfy_cast_weights = True

    class Conv2d(disable_weight_init.Conv2d):
        comfy_cast_weights = True

    class LayerNorm(disable_weight_init.LayerNorm):
        comfy_cast_weights = True

    class GroupNorm(disable_weight_init.GroupNorm):
        comfy_cast_weights = True

    class Embedding(disable_weight_init.Embedding):
        comfy_cast_weights = True


def pick_operations(weight_dtype, compute_dtype, load_device=None, disable_fast_fp8=False, fp8_optimizations=False, scaled_fp8=None):
    if compute_dtype is None or weight_dtype == compute_dtype:
        return disable_weight_init
    return manual_cast
