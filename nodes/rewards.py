"""DeepGenOCRReward: the OCR text-accuracy reward that RL training uses, on an IMAGE batch."""

from __future__ import annotations

from functools import lru_cache

from ..deepgen_core.image_processing import channels_last_to_pil
from ..deepgen_core.rewards.ocr import OCRReward, extract_target_text
from ._comfy import io, model_management
from .ui_data import ocr_payload, thumbnails


@lru_cache(maxsize=1)
def ocr_engine() -> OCRReward:
    """One CPU OCR engine per process (ONNX models shipped in the rapidocr wheel; about 1 s to start). It holds
    no GPU memory, so keeping it alive costs ComfyUI's memory manager nothing."""
    return OCRReward()


class DeepGenOCRReward(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DeepGenOCRReward",
            display_name="DeepGen OCR Reward",
            category="DeepGen/rl",
            description="Scores how well each image renders the target text, with the same OCR reward function MR-GRPO training uses (offline rapidocr on the CPU, about 0.5-1 s per image).",
            inputs=[
                io.Image.Input("images", tooltip="Images to score (the whole batch)."),
                io.String.Input("target_text", multiline=False, default="", tooltip="The text that should appear. Quotes are optional: with quotes inside (e.g. a prompt), the quoted part is the target. Empty: images are not scored."),
            ],
            outputs=[
                io.Float.Output("SCORES", display_name="scores", is_output_list=True, tooltip="One score per image in 0..1 (1 - normalised edit distance); -1 where nothing was scored."),
                io.String.Output("REPORT", display_name="report", tooltip="Recognised text and score per image."),
            ],
        )

    @classmethod
    def execute(cls, images, target_text: str) -> io.NodeOutput:
        pils = channels_last_to_pil(images, name="images")
        target = extract_target_text(target_text) or target_text.strip() or None
        model_management.throw_exception_if_processing_interrupted()
        result = ocr_engine().score_texts(pils, [target] * len(pils))
        scores = [-1.0 if s is None else float(s) for s in result.scores]
        lines = [f"image {i}: score {'n/a' if s is None else f'{s:.3f}'} | {d}" for i, (s, d) in enumerate(zip(result.scores, result.details))]
        payload = ocr_payload(target, result.scores, result.details, thumbnails(images, cls))
        return io.NodeOutput(scores, f"target: {target!r}\n" + "\n".join(lines), ui={"deepgen_ocr": [payload]})
