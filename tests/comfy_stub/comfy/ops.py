"""Stand-in for `comfy.ops.disable_weight_init`: the torch layers plus the flag ComfyUI's partial loader reads."""

import torch


class CastWeightBiasOp:
    comfy_cast_weights = False
    weight_function = []  # noqa: RUF012 - ComfyUI's class attribute
    bias_function = []  # noqa: RUF012


class disable_weight_init:
    class Linear(torch.nn.Linear, CastWeightBiasOp):
        pass

    class Conv2d(torch.nn.Conv2d, CastWeightBiasOp):
        pass

    class LayerNorm(torch.nn.LayerNorm, CastWeightBiasOp):
        pass

    class GroupNorm(torch.nn.GroupNorm, CastWeightBiasOp):
        pass

    class Embedding(torch.nn.Embedding, CastWeightBiasOp):
        pass
