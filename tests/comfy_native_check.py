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


class Bench:
    """The embedded DeepGen-Tiny loaded both ways (native MODEL + CLIP, one-box DEEPGEN_MODEL) and the samplers."""

    def __init__(self, comfy_nodes) -> None:
        from deepgen_pack.nodes import loading, native_nodes

        self.nodes, tiny = comfy_nodes, loading.EMBEDDED
        self.model = native_nodes.DeepGenDiTLoader.execute(tiny).result[0]
        self.clip = native_nodes.DeepGenCLIPLoader.execute(tiny).result[0]
        self.one_box_model, self.vae = loading.DeepGenLoader.execute(tiny, loading.FROM_MODEL, loading.FROM_MODEL).result
        self.latent = {"samples": torch.zeros(1, 16, 16, 16)}

    def ksample(self, model, pos, neg, latent=None, sampler="euler", scheduler="normal", seed=SEED) -> torch.Tensor:
        return self.nodes.common_ksampler(model, seed, STEPS, CFG, sampler, scheduler, pos, neg, latent or self.latent)[0]["samples"]

    def one_box(self, pos, neg, latent=None, seed=SEED) -> torch.Tensor:
        from deepgen_pack.nodes import sampling

        return sampling.DeepGenSampler.execute(self.one_box_model, pos, neg, latent or self.latent, seed, STEPS, CFG, 3.0).result[0]["samples"]

    def decode(self, samples: torch.Tensor) -> torch.Tensor:
        return self.nodes.VAEDecode().decode(self.vae, {"samples": samples})[0]


def text_to_image_checks(b: Bench, out: dict) -> tuple:
    """The same (jointly encoded) conditioning into KSampler and DeepGen Sampler; other samplers run."""
    from comfy_extras.nodes_model_advanced import ModelSamplingSD3

    from deepgen_pack.nodes import conditioning

    pos, neg = conditioning.DeepGenVLMEncode.execute(b.one_box_model, PROMPT, "").result
    reference = b.one_box(pos, neg)
    for scheduler in ("normal", "simple"):
        out[f"t2i_euler_{scheduler}"] = rel(b.ksample(b.model, pos, neg, scheduler=scheduler), reference)
    out["t2i_shift3_node"] = rel(b.ksample(ModelSamplingSD3().patch(b.model, 3.0)[0], pos, neg), reference)
    out["t2i_shift6_node"] = rel(b.ksample(ModelSamplingSD3().patch(b.model, 6.0)[0], pos, neg), reference)
    batch = {"samples": torch.zeros(2, 16, 16, 16)}  # KSampler and DeepGen Sampler draw a batch's noise alike
    out["t2i_batch2"] = rel(b.ksample(b.model, pos, neg, batch), b.one_box(pos, neg, batch))
    for sampler, scheduler in (("dpmpp_2m", "simple"), ("res_multistep", "simple"), ("dpmpp_2m", "karras"), ("uni_pc", "beta"), ("euler_ancestral", "sgm_uniform")):
        image = b.decode(b.ksample(b.model, pos, neg, sampler=sampler, scheduler=scheduler))
        out[f"finite_{sampler}_{scheduler}"] = bool(torch.isfinite(image).all()) and float(image.std()) > 0.01
    return pos, neg, reference


def sweep_checks(b: Bench, out: dict, pos, neg) -> None:
    """Every KSampler sampler (scheduler `simple`) and every scheduler (sampler `euler`) runs to a finite picture."""
    import comfy.samplers

    failures = {}
    runs = [(s, "simple") for s in comfy.samplers.KSampler.SAMPLERS] + [("euler", s) for s in comfy.samplers.KSampler.SCHEDULERS]
    for sampler, scheduler in runs:
        try:
            image = b.decode(b.ksample(b.model, pos, neg, sampler=sampler, scheduler=scheduler))
        except Exception as error:  # noqa: BLE001 - recorded by name for the test's report
            failures[f"{sampler}/{scheduler}"] = repr(error)[:300]
            continue
        if not (torch.isfinite(image).all() and float(image.std()) > 0.01):
            failures[f"{sampler}/{scheduler}"] = "non-finite or flat image"
    out["sweep_runs"], out["sweep_failures"] = len(runs), failures


def edit_checks(b: Bench, out: dict, reference: torch.Tensor) -> None:
    """One-reference edit (references on both branches, DeepGen Sampler's rule; 8-bit source), then the CLIP side:
    CLIPTextEncode / DeepGen Text Encode (edit) into both samplers."""
    from comfy_extras.nodes_edit_model import ReferenceLatent

    from deepgen_pack.nodes import conditioning, native_nodes

    source = (b.decode(reference) * 255).round() / 255
    pos_e, neg_e = conditioning.DeepGenVLMEncode.execute(b.one_box_model, EDIT, "", image_1=source).result
    pos_r, empty = conditioning.DeepGenReferenceLatent.execute(pos_e, source, b.vae).result
    edit_reference = b.one_box(pos_r, neg_e, empty, seed=7)
    encoded = b.nodes.VAEEncode().encode(b.vae, source)[0]
    pos_n, neg_n = (ReferenceLatent.execute(c, encoded).result[0] for c in (pos_e, neg_e))
    out["edit_euler_normal"] = rel(b.ksample(b.model, pos_n, neg_n, encoded, seed=7), edit_reference)
    out["edit_changes_image"] = rel(edit_reference, reference)
    # two references (the source and its mirror image): the VLM sees both, the DiT gets both latents
    mirror = source.flip(2)
    pos_2, neg_2 = conditioning.DeepGenVLMEncode.execute(b.one_box_model, EDIT, "", image_1=source, image_2=mirror).result
    pos_2r = conditioning.DeepGenReferenceLatent.execute(conditioning.DeepGenReferenceLatent.execute(pos_2, source, b.vae).result[0], mirror, b.vae).result[0]
    mirror_latent = b.nodes.VAEEncode().encode(b.vae, mirror)[0]
    pos_2n, neg_2n = (ReferenceLatent.execute(ReferenceLatent.execute(c, encoded).result[0], mirror_latent).result[0] for c in (pos_2, neg_2))
    out["edit_two_references"] = rel(b.ksample(b.model, pos_2n, neg_2n, encoded, seed=7), b.one_box(pos_2r, neg_2, empty, seed=7))
    pos_c, neg_c = (b.nodes.CLIPTextEncode().encode(b.clip, text)[0] for text in (PROMPT, ""))
    out["clip_marker"] = bool(pos_c[0][1].get("deepgen")) and pos_c[0][1]["pooled_output"].shape == pos_e[0][1]["pooled_output"].shape
    out["clip_into_one_box_vs_native"] = rel(b.one_box(pos_c, neg_c), b.ksample(b.model, pos_c, neg_c))
    edit_c, edit_neg_c = (native_nodes.DeepGenTextEncodeEdit.execute(b.clip, text, image_1=source, vae=b.vae).result[0] for text in (EDIT, ""))
    out["clip_edit_native_vs_one_box"] = rel(b.ksample(b.model, edit_c, edit_neg_c, encoded, seed=7), b.one_box(edit_c, edit_neg_c, empty, seed=7))


def weight_checks(b: Bench, out: dict, pos, neg, reference: torch.Tensor, opts) -> None:
    """Weight dtypes through comfy.ops, and the SFT fine-tune as a LoRA through LoraLoaderModelOnly against the
    fine-tuned DiT itself."""
    import folder_paths

    from deepgen_pack.deepgen_core.native_dit import read_dit
    from deepgen_pack.nodes import loading, native_nodes
    from deepgen_pack.nodes.native_model import native_model

    for dtype in ("bf16", "fp8_e4m3fn", "fp8_e4m3fn_fast"):
        m = native_nodes.DeepGenDiTLoader.execute(loading.EMBEDDED, dtype).result[0]
        samples = b.ksample(m, pos, neg)
        out[f"dtype_{dtype}"] = rel(samples, reference) if torch.isfinite(samples).all() else "non-finite"
        out[f"dtype_{dtype}_storage"] = str(m.model.diffusion_model.transformer_blocks[0].attn.to_q.weight.dtype)
    folder_paths.add_model_folder_path("loras", str(Path(opts.lora).parent))
    with_lora = b.nodes.LoraLoaderModelOnly().load_lora_model_only(b.model, Path(opts.lora).name, 1.0)[0]
    tuned_samples = b.ksample(native_model(read_dit(opts.tuned_dit)), pos, neg)
    out["lora_vs_merged"] = rel(b.ksample(with_lora, pos, neg), tuned_samples)
    out["lora_patches"] = len(with_lora.patches)
    out["tuned_vs_base"] = rel(tuned_samples, reference)
    out["base_after_lora"] = rel(b.ksample(b.model, pos, neg), reference)  # the clone's patches never leak into the base


def memory_checks(b: Bench, out: dict, pos, neg, reference: torch.Tensor) -> None:
    """Partial loading (the --lowvram / --novram path, forced on the CPU): streamed layers cast per call; then
    Unload Models and sample again."""
    import comfy.model_management as mm

    mm.unload_all_models()
    dit = b.model.model
    x, sigma = torch.randn(1, 16, 16, 16, generator=torch.Generator().manual_seed(0)), torch.tensor([0.7])
    conds = {"c_crossattn": pos[0][0], "y": pos[0][1]["pooled_output"]}
    full = dit.apply_model(x, sigma, **conds)
    b.model.load(torch.device("cpu"), lowvram_model_memory=1, force_patch_weights=False, full_load=False)
    out["lowvram_streamed_layers"] = sum(1 for layer in dit.modules() if getattr(layer, "comfy_cast_weights", False))
    out["lowvram_vs_full"] = rel(dit.apply_model(x, sigma, **conds), full)
    b.model.detach()
    mm.unload_all_models()
    out["after_unload"] = rel(b.ksample(b.model, pos, neg), reference)


def run_checks(comfy_nodes, opts) -> dict:
    bench, out = Bench(comfy_nodes), {}
    pos, neg, reference = text_to_image_checks(bench, out)
    sweep_checks(bench, out, pos, neg)
    edit_checks(bench, out, reference)
    weight_checks(bench, out, pos, neg, reference, opts)
    memory_checks(bench, out, pos, neg, reference)
    return out

if __name__ == "__main__":
    sys.exit(main())
