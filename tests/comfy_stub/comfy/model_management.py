"""Stand-in for `comfy.model_management` on a CPU-only machine (`--cpu`): every device is the CPU."""

from __future__ import annotations

import torch

current_loaded_models: list = []
interrupt_processing = False


class InterruptProcessingException(Exception):
    pass


def get_torch_device() -> torch.device:
    return torch.device("cpu")


intermediate_device = text_encoder_device = text_encoder_offload_device = unet_offload_device = vae_device = vae_offload_device = get_torch_device


def should_use_bf16(device=None, model_params=0, prioritize_performance=True, manual_cast=False) -> bool:
    return False


def load_models_gpu(models, memory_required=0, force_patch_weights=False, minimum_memory_required=None, force_full_load=False) -> None:
    for patcher in models:
        patcher.model.to(patcher.load_device)
        if patcher not in current_loaded_models:
            current_loaded_models.insert(0, patcher)
        for callback in patcher.callbacks.get("on_load_after", []):
            callback(patcher, patcher.load_device, 0, force_patch_weights, True)


def unload_all_models() -> None:
    for patcher in current_loaded_models:
        patcher.model.to(patcher.offload_device)
    current_loaded_models.clear()


def interrupt_current_processing(value: bool = True) -> None:
    global interrupt_processing
    interrupt_processing = value


def processing_interrupted() -> bool:
    return interrupt_processing


def throw_exception_if_processing_interrupted() -> None:
    global interrupt_processing
    if interrupt_processing:
        interrupt_processing = False
        raise InterruptProcessingException()


def unet_dtype(device=None, model_params=0, supported_dtypes=(torch.float16, torch.bfloat16, torch.float32), weight_dtype=None):
    return torch.float32  # a CPU computes in fp32


def unet_manual_cast(weight_dtype, inference_device, supported_dtypes=(torch.float16, torch.bfloat16, torch.float32)):
    return None if weight_dtype in (torch.float32, torch.float64) else torch.float32


def load_model_gpu(model) -> None:
    load_models_gpu([model])
