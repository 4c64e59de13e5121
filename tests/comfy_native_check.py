"""Runs inside a real ComfyUI's Python (not collected by pytest): the native DeepGen MODEL / CLIP on the embedded
DeepGen-Tiny against the one-box DeepGen nodes, through ComfyUI's own nodes and sampling code, on the CPU.

    COMFY_PYTHON tests/comfy_native_check.py --comfy DIR --tuned-dit DIT --lora LORA --out results.json

Writes {check: number or string} for `test_comfy_native.py` to judge; every number is a max-abs difference
relative to the reference's max-abs value unless named otherwise.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
PROMPT = "a large red circle in the center, blue background"
EDIT = "make the circle green"
STEPS, CFG, SEED = 12, 4.0, 42


def _boot(comfy_dir: str):
    sys.path.insert(0, comfy_dir)
    from comfy.cli_args import args

    args.cpu = True
    import nodes as comfy_nodes

    spec = importlib.util.spec_from_file_location("deepgen_pack", REPO / "__init__.py", submodule_search_locations=[str(REPO)])
    pack = importlib.util.module_from_spec(spec)
    sys.modules["deepgen_pack"] = pack
    spec.loader.exec_module(pack)
    return comfy_nodes


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max() / b.float().abs().max())


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--comfy", required=True)
    parser.add_argument("--tuned-dit")
    parser.add_argument("--lora")
    parser.add_argument("--out", required=True)
    parser.add_argument("--compile-only", action="store_true", help="only TorchCompileModel (inductor; minutes on a CPU)")
    opts = parser.parse_args()
    comfy_nodes = _boot(opts.comfy)
    with torch.inference_mode():
        results = compile_check(comfy_nodes) if opts.compile_only else run_checks(comfy_nodes, opts)
    Path(opts.out).write_text(json.dumps(results, indent=1))
    return 0


def compile_check(comfy_nodes) -> dict:
    """TorchCompileModel (inductor) on the native DiT against the eager model, 6 euler steps."""
    from comfy_extras.nodes_torch_compile import TorchCompileModel

    from deepgen_pack.nodes import loading, native_nodes

    model = native_nodes.DeepGenDiTLoader.execute(loading.EMBEDDED).result[0]
    clip = native_nodes.DeepGenCLIPLoader.execute(loading.EMBEDDED).result[0]
    pos, neg = (comfy_nodes.CLIPTextEncode().encode(clip, text)[0] for text in (PROMPT, ""))
    latent = {"samples": torch.zeros(1, 16, 16, 16)}
    eager = comfy_nodes.common_ksampler(model, SEED, 6, CFG, "euler", "normal", pos, neg, latent)[0]["samples"]
    compiled = TorchCompileModel.execute(model, "inductor").result[0]
    return {"compiled_vs_eager": rel(comfy_nodes.common_ksampler(compiled, SEED, 6, CFG, "euler", "normal", pos, neg, latent)[0]["samples"], eager)}


def run_checks(comfy_nodes, opts) -> dict:
    import comfy.model_management as mm
    from comfy_extras.nodes_edit_model import ReferenceLatent
    from comfy_extras.nodes_model_advanced import ModelSamplingSD3

    from deepgen_pack.nodes import conditioning, loading, native_nodes, sampling

    tiny = loading.EMBEDDED
    model = native_nodes.DeepGenDiTLoader.execute(tiny).result[0]
    clip = native_nodes.DeepGenCLIPLoader.execute(tiny).result[0]
    dg, vae = loading.DeepGenLoader.execute(tiny, loading.FROM_MODEL, loading.FROM_MODEL).result
    latent = {"samples": torch.zeros(1, 16, 16, 16)}
    out: dict = {}

    def ksample(m, pos, neg, lat=latent, sampler="euler", scheduler="normal", seed=SEED):
        return comfy_nodes.common_ksampler(m, seed, STEPS, CFG, sampler, scheduler, pos, neg, lat)[0]["samples"]

    def one_box(pos, neg, lat=latent, seed=SEED):
        return sampling.DeepGenSampler.execute(dg, pos, neg, lat, seed, STEPS, CFG, 3.0).result[0]["samples"]

    # text-to-image: the same (jointly encoded) conditioning into both samplers
    pos, neg = conditioning.DeepGenVLMEncode.execute(dg, PROMPT, "").result
    reference = one_box(pos, neg)
    for scheduler in ("normal", "simple"):
        out[f"t2i_euler_{scheduler}"] = rel(ksample(model, pos, neg, scheduler=scheduler), reference)
    out["t2i_shift3_node"] = rel(ksample(ModelSamplingSD3().patch(model, 3.0)[0], pos, neg), reference)
    out["t2i_shift6_node"] = rel(ksample(ModelSamplingSD3().patch(model, 6.0)[0], pos, neg), reference)

    # every other sampler runs and decodes to a finite image
    for sampler, scheduler in (("dpmpp_2m", "simple"), ("res_multistep", "simple"), ("dpmpp_2m", "karras"), ("uni_pc", "beta"), ("euler_ancestral", "sgm_uniform")):
        image = comfy_nodes.VAEDecode().decode(vae, {"samples": ksample(model, pos, neg, sampler=sampler, scheduler=scheduler)})[0]
        out[f"finite_{sampler}_{scheduler}"] = bool(torch.isfinite(image).all()) and float(image.std()) > 0.01

    # one-reference edit: references on both branches (DeepGen Sampler's rule), 8-bit source image
    source = comfy_nodes.VAEDecode().decode(vae, {"samples": reference})[0]
    source = (source * 255).round() / 255
    pos_e, neg_e = conditioning.DeepGenVLMEncode.execute(dg, EDIT, "", image_1=source).result
    pos_r, empty = conditioning.DeepGenReferenceLatent.execute(pos_e, source, vae).result
    edit_reference = one_box(pos_r, neg_e, empty, seed=7)
    encoded = comfy_nodes.VAEEncode().encode(vae, source)[0]
    pos_n, neg_n = (ReferenceLatent.execute(c, encoded).result[0] for c in (pos_e, neg_e))
    edit_native = ksample(model, pos_n, neg_n, encoded, seed=7)
    out["edit_euler_normal"] = rel(edit_native, edit_reference)
    out["edit_changes_image"] = rel(edit_reference, reference)

    # the CLIP side: CLIPTextEncode / DeepGen Text Encode (edit) into both samplers
    pos_c = comfy_nodes.CLIPTextEncode().encode(clip, PROMPT)[0]
    neg_c = comfy_nodes.CLIPTextEncode().encode(clip, "")[0]
    out["clip_marker"] = bool(pos_c[0][1].get("deepgen")) and pos_c[0][1]["pooled_output"].shape[-1] == pos[0][1]["pooled_output"].shape[-1]
    out["clip_into_one_box_vs_native"] = rel(one_box(pos_c, neg_c), ksample(model, pos_c, neg_c))
    edit_c = native_nodes.DeepGenTextEncodeEdit.execute(clip, EDIT, image_1=source, vae=vae).result[0]
    edit_neg_c = native_nodes.DeepGenTextEncodeEdit.execute(clip, "", image_1=source, vae=vae).result[0]
    out["clip_edit_native_vs_one_box"] = rel(ksample(model, edit_c, edit_neg_c, encoded, seed=7), one_box(edit_c, edit_neg_c, empty, seed=7))

    # weight dtypes (comfy.ops): fp8 storage runs and stays close
    for dtype in ("bf16", "fp8_e4m3fn", "fp8_e4m3fn_fast"):
        m = native_nodes.DeepGenDiTLoader.execute(tiny, dtype).result[0]
        samples = ksample(m, pos, neg)
        out[f"dtype_{dtype}"] = rel(samples, reference) if torch.isfinite(samples).all() else "non-finite"
        out[f"dtype_{dtype}_storage"] = str(m.model.diffusion_model.transformer_blocks[0].attn.to_q.weight.dtype)

    # LoRA: the SFT fine-tune as a LoRA through LoraLoaderModelOnly vs the fine-tuned DiT itself
    lora_dir = Path(opts.lora).parent
    import folder_paths

    folder_paths.add_model_folder_path("loras", str(lora_dir))
    with_lora = comfy_nodes.LoraLoaderModelOnly().load_lora_model_only(model, Path(opts.lora).name, 1.0)[0]
    from deepgen_pack.deepgen_core.native_dit import read_dit
    from deepgen_pack.nodes.native_model import native_model

    tuned = native_model(read_dit(opts.tuned_dit))
    tuned_samples = ksample(tuned, pos, neg)
    out["lora_vs_merged"] = rel(ksample(with_lora, pos, neg), tuned_samples)
    out["lora_patches"] = len(with_lora.patches)
    out["tuned_vs_base"] = rel(tuned_samples, reference)
    out["base_after_lora"] = rel(ksample(model, pos, neg), reference)  # the clone's patches never leak into the base

    # partial loading (--lowvram / --novram path): every streamable layer cast per call from the offload device
    mm.unload_all_models()
    dit = model.model
    x, sigma = torch.randn(1, 16, 16, 16, generator=torch.Generator().manual_seed(0)), torch.tensor([0.7])
    conds = {"c_crossattn": pos[0][0], "y": pos[0][1]["pooled_output"]}
    full = dit.apply_model(x, sigma, **conds)
    model.load(torch.device("cpu"), lowvram_model_memory=1, force_patch_weights=False, full_load=False)
    streamed = sum(1 for layer in dit.modules() if getattr(layer, "comfy_cast_weights", False))
    out["lowvram_streamed_layers"] = streamed
    out["lowvram_vs_full"] = rel(dit.apply_model(x, sigma, **conds), full)
    model.detach()
    mm.unload_all_models()
    out["after_unload"] = rel(ksample(model, pos, neg), reference)
    return out


if __name__ == "__main__":
    sys.exit(main())
