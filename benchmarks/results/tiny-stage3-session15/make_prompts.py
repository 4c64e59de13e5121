"""Session-15 stage-3 prompt sets: the shipped text/shape prompts, the weak-pair subset, and novel words."""
import numpy as np
from pathlib import Path
from deepgen_core.tiny_world import write_rl_prompts
from deepgen_core.tiny_world.sampling import sample_rng, sample_text
from deepgen_core.tiny_world.world import WORDS, TEXT_COLOUR_PAIRS, TextScene, describe_text
root = Path(".devcarry/s15")
write_rl_prompts(root, n_text=2000, n_shapes=500, seed=1)  # same as tiny_background start (data seed 0 + 1)
weak = []
for i in range(2000):
    s = sample_text(sample_rng(1, "train", "text", 10_000_000 + i), "train")
    if (s.scene.colour, s.scene.background) in (("black", "green"), ("green", "black")):
        weak.append(s.prompt)
# all 41 weak training combos, 4 templates each (the 2000 draws hold only some of them)
from deepgen_core.tiny_world.sampling import TEXT_COMBOS
rng = np.random.default_rng(5)
for c in TEXT_COMBOS["train"]:
    if (c[1], c[2]) in (("black", "green"), ("green", "black")):
        weak += [describe_text(TextScene(*c), rng) for _ in range(4)]
(root / "prompts" / "weak.txt").write_text("\n".join(weak) + "\n")
letters = sorted(set("".join(WORDS)))
rng = np.random.default_rng(7)
novel = []
while len(novel) < 2000:
    w = WORDS[int(rng.integers(len(WORDS)))]
    i = int(rng.integers(len(w)))
    x = w[:i] + letters[int(rng.integers(len(letters)))] + w[i + 1:]
    if x in WORDS:
        continue
    c, b = TEXT_COLOUR_PAIRS[int(rng.integers(len(TEXT_COLOUR_PAIRS)))]
    novel.append(describe_text(TextScene(x, c, b), rng))
(root / "prompts" / "novel.txt").write_text("\n".join(novel) + "\n")
(root / "weak.yaml").write_text("sampling_mode: sample_proportional\ndatasets:\n  text_weak:\n    path: prompts/weak.txt\n    reward_weights: {ocr: 1.0}\n")
(root / "novel.yaml").write_text("sampling_mode: sample_proportional\ndatasets:\n"
  "  text_render:\n    path: prompts/text.txt\n    reward_weights: {ocr: 1.0}\n"
  "  text_novel:\n    path: prompts/novel.txt\n    reward_weights: {ocr: 1.0}\n"
  "  shapes:\n    path: prompts/shapes.txt\n    reward_weights: {shape_world: 1.0}\n")
print(len(weak), len(set(weak)), len(novel), novel[:3], weak[:3])
