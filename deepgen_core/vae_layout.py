"""Key layouts of the tiny VAE: diffusers' `AutoencoderTiny` <-> ComfyUI's TAESD files (pure converters).

diffusers keeps the encoder and decoder as `encoder.layers.N.*` / `decoder.layers.N.*`. A ComfyUI TAESD file
holds `taesd_encoder.N.*` (the same indices) and `taesd_decoder.N.*`, whose Sequential starts with the
tanh clamp that diffusers applies outside its layers, so decoder index N is diffusers' N - 1; plus two scalars,
`vae_scale` and `vae_shift`, that ComfyUI applies around the network (encode: `enc(x) / scale + shift`,
decode: `dec((z - shift) * scale)`). DeepGen writes 1 and 0: ComfyUI's VAE-space latents are then the
network's native latents, which our pipeline shifts and scales with the SD3 constants from the config.
"""

from __future__ import annotations

import re

import torch

from .checkpoint import group_keys
from .errors import CheckpointError
from .models.tiny_vae import tiny_vae_config

TAESD_PROBE_KEY = "taesd_decoder.1.weight"  # how ComfyUI recognises a TAESD file
_DIFFUSERS_RE = re.compile(r"^(encoder|decoder)\.layers\.(\d+)\.(.+)$")
_COMFY_RE = re.compile(r"^taesd_(encoder|decoder)\.(\d+)\.(.+)$")
_DECODER_OFFSET = 1  # ComfyUI's decoder Sequential has the clamp at index 0


def is_comfy_taesd(state: dict[str, torch.Tensor]) -> bool:
    return TAESD_PROBE_KEY in state


def state_dict_to_comfy_taesd(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`AutoencoderTiny.state_dict()` -> ComfyUI TAESD keys, with `vae_scale = 1`, `vae_shift = 0` (fp32 scalars).

    Args:
        state: diffusers keys (`encoder.layers.N.*`, `decoder.layers.N.*`); not modified.
    Raises:
        CheckpointError: on keys outside the encoder/decoder layers.
    """
    out: dict[str, torch.Tensor] = {}
    leftover = []
    for key, value in state.items():
        match = _DIFFUSERS_RE.match(key)
        if match is None:
            leftover.append(key)
            continue
        part, index, rest = match.groups()
        index = int(index) + (_DECODER_OFFSET if part == "decoder" else 0)
        out[f"taesd_{part}.{index}.{rest}"] = value
    if leftover:
        raise CheckpointError(f"these tiny-VAE tensors have no TAESD key: [{group_keys(leftover)}].")
    out["vae_scale"] = torch.tensor(1.0)
    out["vae_shift"] = torch.tensor(0.0)
    return out


def comfy_taesd_to_state_dict(state: dict[str, torch.Tensor], what: str = "the VAE file") -> dict[str, torch.Tensor]:
    """ComfyUI TAESD keys -> `AutoencoderTiny` keys (inverse of `state_dict_to_comfy_taesd`).

    Args:
        state: `taesd_encoder.N.*`, `taesd_decoder.N.*` and optional `vae_scale` / `vae_shift`; not modified.
        what: the file, named in errors.
    Raises:
        CheckpointError: on unknown keys or on a `vae_scale` / `vae_shift` other than 1 / 0 (the model-space
            conversion is the SD3 one; a rescaled TAESD file does not fit it).
    """
    rest_state = dict(state)
    for name, identity in (("vae_scale", 1.0), ("vae_shift", 0.0)):
        value = rest_state.pop(name, None)
        if value is not None and abs(float(value) - identity) > 1e-6:
            raise CheckpointError(
                f"{what} stores {name} = {float(value):g}; DeepGen's tiny VAE files use vae_scale 1 and vae_shift 0 "
                "(the latent scaling lives in the SD3 constants). Use a VAE written by `deepgen train vae`."
            )
    out: dict[str, torch.Tensor] = {}
    for key in list(rest_state):
        match = _COMFY_RE.match(key)
        if match is None:
            continue
        part, index, rest = match.groups()
        index = int(index) - (_DECODER_OFFSET if part == "decoder" else 0)
        out[f"{part}.layers.{index}.{rest}"] = rest_state.pop(key)
    if rest_state:
        raise CheckpointError(f"{what} has tensors outside the TAESD layout: [{group_keys(list(rest_state))}].")
    return out


def infer_taesd_config(state: dict[str, torch.Tensor]) -> dict[str, object]:
    """Latent and block channels of a ComfyUI TAESD state dict (for files without DeepGen metadata)."""
    first_decoder_conv = state[TAESD_PROBE_KEY]  # (channels, latent_channels, 3, 3)
    channels, latent_channels = int(first_decoder_conv.shape[0]), int(first_decoder_conv.shape[1])
    return tiny_vae_config(channels=channels, latent_channels=latent_channels)
