"""DeepGenTorchCompile: the DiT's regional `torch.compile` (the `--compile` of `deepgen generate`) for a model copy."""

from __future__ import annotations

from ._comfy import io
from .choices import check_choices
from .loading import DeepGenModelType

BACKENDS = ["inductor", "aot_eager"]


class DeepGenTorchCompile(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DeepGenTorchCompile",
            display_name="DeepGen Torch Compile",
            category="DeepGen/advanced",
            description="Returns a copy of the model whose sampler runs each DiT block through torch.compile (regional compile, as `deepgen generate --compile`). "
                        "The first run compiles (about 45 s at real size, once per ComfyUI process with dynamic shapes); later runs replay the compiled "
                        "blocks, on a GPU inside CUDA graphs. Equal to the plain model within bf16 rounding. The input model is unchanged; weights are shared. "
                        "Skipped, with a warning, while the DiT is only partially loaded (low VRAM).",
            inputs=[
                DeepGenModelType.Input("model", tooltip="The model to copy with the compile setting (not changed itself)."),
                io.Combo.Input("backend", options=BACKENDS, default="inductor", tooltip="inductor: generated fused kernels (the fast one; needs a C++ compiler on CPU "
                               "and Triton on GPU). aot_eager: traces without generating code, to check a graph compiles."),
                io.Boolean.Input("dynamic", default=True, tooltip="On: one compile serves every image size and batch. Off: shape-specialised kernels, about 3-5% "
                                 "faster per step, one ~20 s compile per size (torch stops recompiling after 8 sizes)."),
            ],
            outputs=[DeepGenModelType.Output("MODEL", display_name="model", tooltip="The model with its DiT compiled for sampling.")],
        )

    @classmethod
    def validate_inputs(cls, backend: str = "inductor") -> bool | str:
        return check_choices(backend=(backend, BACKENDS))  # combos only (nodes/choices.py says why)

    @classmethod
    def execute(cls, model, backend: str = "inductor", dynamic: bool = True) -> io.NodeOutput:
        return io.NodeOutput(model.with_compile({"backend": backend, "dynamic": dynamic}))
