"""Training building blocks: config, schedule, optimizer groups, sampler, data formats, checkpoint atomicity."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from train_helpers import REPO, reset_accelerate, tiny_config, tiny_data

from deepgen_core.errors import DeepGenInputError
from deepgen_core.train.config import (
    DataConfig,
    SourceConfig,
    build_config,
    load_config,
)
from deepgen_core.train.data import MixedDataset, SourceDataset, collate, pack_images, unpack_images
from deepgen_core.train.optim import parameter_groups, warmup_cosine
from deepgen_core.train.sampler import MultiSourceBatchSampler

# ------------------------------------------------------------------------------------------------ config


def test_stage_defaults_follow_the_reference():
    pre, sft = build_config("pretrain"), build_config("sft")
    assert (pre.optim.lr, pre.grad_accum, pre.data.task_cycle, pre.lora.enabled, pre.train_transformer) == (1e-4, 4, (1, 3), False, False)
    assert (sft.optim.lr, sft.grad_accum, sft.data.task_cycle, sft.lora.enabled, sft.train_transformer) == (5e-5, 3, (1, 2), True, True)
    assert (sft.lora.rank, sft.lora.alpha, sft.lora.dropout) == (64, 128.0, 0.05)
    assert (sft.optim.betas, sft.optim.weight_decay, sft.optim.grad_clip) == ((0.9, 0.95), 0.05, 1.0)


def test_overrides_and_validation():
    config = load_config("sft", None, ["optim.lr=3e-6", "data.task_cycle=[2, 1]", "lora.rank=8"])
    assert config.optim.lr == 3e-6 and config.data.task_cycle == (2, 1) and config.lora.rank == 8
    with pytest.raises(DeepGenInputError, match="unknown config keys \\['lrate'\\]"):
        load_config("sft", None, ["optim.lrate=1"])
    with pytest.raises(DeepGenInputError, match="does not train the VLM"):
        load_config("pretrain", None, ["lora.enabled=true"])
    with pytest.raises(DeepGenInputError, match="tar shards need"):
        SourceConfig(path="x.tar", format="tar")
    with pytest.raises(DeepGenInputError, match="key.sub=value"):
        load_config("sft", None, ["optim.lr"])
    for bad in ("1.0", "-0.1"):
        with pytest.raises(DeepGenInputError, match=f"data.edit_prompt_dropout must be in \\[0, 1\\), got {bad}"):
            load_config("sft", None, [f"data.edit_prompt_dropout={bad}"])
    assert load_config("sft", None, ["data.edit_prompt_dropout=0.5"]).data.edit_prompt_dropout == 0.5
    assert build_config("sft").data.edit_prompt_dropout == 0.0  # the reference drops only text-to-image captions


@pytest.mark.parametrize("recipe", sorted(p for p in (REPO / "train" / "recipes").glob("*.yaml") if not p.stem.startswith("rl")), ids=lambda p: p.stem)
def test_shipped_recipes_validate(recipe):
    import yaml

    stage = yaml.safe_load(recipe.read_text())["stage"]
    config = load_config(stage, recipe)
    assert config.stage == stage


# ------------------------------------------------------------------------------------------------ optimizer


def test_warmup_cosine_schedule():
    f = lambda s: warmup_cosine(s, warmup_steps=10, total_steps=110, start_factor=1e-5, min_ratio=0.0)
    assert f(0) == pytest.approx(1e-5)
    assert f(5) == pytest.approx(1e-5 + (1 - 1e-5) * 0.5)
    assert f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.5)  # half-way through the cosine: (1 + cos(pi/2)) / 2
    assert f(110) == pytest.approx(0.0, abs=1e-12)


def test_weight_decay_only_on_matrices():
    think = torch.nn.Parameter(torch.zeros(4, 3))
    bias = torch.nn.Parameter(torch.zeros(3))
    frozen = torch.nn.Parameter(torch.zeros(2, 2), requires_grad=False)
    groups = parameter_groups([("think_tokens", think), ("bias", bias), ("frozen", frozen)], 0.05)
    assert groups[0]["weight_decay"] == 0.05 and groups[0]["params"] == [think]
    assert groups[1]["weight_decay"] == 0.0 and groups[1]["params"] == [bias]


# ------------------------------------------------------------------------------------------------ sampler


def _sampler(**kw):
    args = {"source_sizes": [10, 7, 5], "source_tasks": ["text2image", "text2image", "image2image"], "source_weights": [1, 3, 1],
                "task_cycle": (1, 2), "batch_size": 2, "seed": 3}
    return MultiSourceBatchSampler(**{**args, **kw})


def test_sampler_cycle_ranks_and_resume():
    batches = list(_sampler(rank=0, world_size=2).batches(30))
    assert [b.task for b in batches[:6]] == ["image2image", "text2image", "text2image"] * 2
    assert all(b.source == 2 for b in batches if b.task == "image2image")
    other = list(_sampler(rank=1, world_size=2).batches(30))
    assert [(b.task, b.source) for b in batches] == [(b.task, b.source) for b in other]  # same plan on all ranks
    first_epoch = [b for b in batches if b.source == 2][:1] + [b for b in other if b.source == 2][:1]
    assert not set(first_epoch[0].sample_indices) & set(first_epoch[1].sample_indices)  # disjoint per rank
    resumed = list(_sampler(rank=0, world_size=2, start=17).batches(30))
    assert resumed == batches[17:]


def test_sampler_streams_are_seeded_epoch_permutations():
    """Each source is the concatenation of permutations seeded by (seed, source, epoch): crossing an epoch inside
    a batch switches permutation exactly at the boundary."""
    batches = [b for b in _sampler(task_cycle=(0, 1), source_weights=[1, 0.0001, 1], batch_size=4).batches(40) if b.source == 0][:3]
    stream = [i for b in batches for i in b.sample_indices]
    perms = [np.random.Generator(np.random.PCG64([3, 0, e])).permutation(10) for e in range(2)]
    assert stream == [int(i) for i in np.concatenate(perms)[:12]]


def test_sampler_without_edit_sources_skips_the_edit_slots():
    sampler = _sampler(source_sizes=[10], source_tasks=["text2image"], source_weights=[1])
    assert {b.task for b in sampler.batches(6)} == {"text2image"}


# ------------------------------------------------------------------------------------------------ data


def test_every_format_reads(tmp_path):
    paths = tiny_data(tmp_path)
    data = DataConfig(image_size=64, min_side=16)
    t2i = SourceDataset(SourceConfig(path=str(paths["blip3o"])), data)[1]
    assert t2i["text"] == "a green circle" and t2i["pixel_values"].shape[0] == 3
    h, w = t2i["pixel_values"].shape[1:]  # 96x64 source -> fix_pixels: area ~ 64^2, sides rounded up to 32
    assert (w, h) == (96, 64) and t2i["pixel_values"].min() >= -1 and t2i["pixel_values"].max() <= 1
    caption = SourceDataset(SourceConfig(path=str(paths["caption_json"]), format="caption_json"), data)[0]
    assert caption["text"] == "a red square on a blue background"
    edit = SourceDataset(SourceConfig(path=str(paths["edit"]), format="edit"), data)[0]
    shard = SourceDataset(SourceConfig(path=str(paths["tar"]), format="tar", task="image2image"), data)[0]
    for sample in (edit, shard):
        assert sample["text"] == "make it darker" and len(sample["pixel_values_src"]) == 2  # both references used
    assert torch.equal(edit["pixel_values"], shard["pixel_values"])
    single = SourceDataset(SourceConfig(path=str(paths["edit"]), format="edit"), DataConfig(image_size=64, min_side=16, max_references=1))[0]
    assert len(single["pixel_values_src"]) == 1


def test_packed_batches_unpack_to_the_same_tensors():
    """Equal-size targets and references cross the DataLoader as one tensor each and come back as the lists."""
    g = torch.Generator().manual_seed(0)
    samples = [{"pixel_values": torch.randn(3, 8, 8, generator=g), "text": str(i), "skipped": 0,
                "pixel_values_src": [torch.randn(3, 8, 8, generator=g), torch.randn(3, 4, 8, generator=g)]} for i in range(3)]
    packed = pack_images(collate(samples))
    assert packed["pixel_values"].shape == (3, 3, 8, 8) and torch.is_tensor(packed["pixel_values_src"]) is False  # refs differ in size
    samples = [dict(s, pixel_values_src=s["pixel_values_src"][:1]) for s in samples]
    packed = pack_images(collate(samples))
    assert packed["pixel_values_src"].shape == (3, 1, 3, 8, 8)
    back = unpack_images(packed)
    for s, pixels, refs in zip(samples, back["pixel_values"], back["pixel_values_src"]):
        assert torch.equal(pixels, s["pixel_values"]) and len(refs) == 1 and torch.equal(refs[0], s["pixel_values_src"][0])


def test_step_noise_of_equal_shapes_is_the_per_sample_stream():
    """`draw_step_noise` draws equal-shape latents in one call; the values are those of per-sample draws in order
    (u, then noise per sample, then posterior eps per sample), whatever the batch size."""
    from types import SimpleNamespace

    from deepgen_core.train.modeling import draw_step_noise

    shape = (16, 4, 6)
    batch = {"latent_mean": [torch.zeros(shape)] * 3}
    got = draw_step_noise(SimpleNamespace(), batch, torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    u = torch.rand(3, generator=g)
    expected = [torch.randn(shape, generator=g) for _ in range(6)]
    assert torch.equal(got.u, u) and got.source_eps is None
    for a, b in zip(got.noise + got.target_eps, expected):
        assert torch.equal(a, b)


def test_bad_samples_are_replaced_and_counted(tmp_path):
    paths = tiny_data(tmp_path)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    records = [{"txt": "missing", "image_path": "nope.png"}, {"txt": "broken", "image_path": "broken.png"},
               {"image_path": "images/t0.png"}, {"txt": "good", "image_path": "images/t0.png"}]
    index = tmp_path / "mixed.json"
    index.write_text(json.dumps(records))
    data = DataConfig(sources=[{"path": str(index)}], image_size=64, min_side=16, max_retries=3)
    sample = MixedDataset(data)[(0, 0, 0, "text2image")]
    assert sample["text"] == "good" and sample["skipped"] == 3
    assert collate([sample, {**sample, "skipped": 1}])["num_skipped"] == 4
    tiny = DataConfig(sources=[{"path": str(paths["blip3o"])}], image_size=64, min_side=200, max_retries=2)
    with pytest.raises(RuntimeError, match="3 consecutive samples"):
        MixedDataset(tiny)[(0, 0, 0, "text2image")]


class _TextRecorder(torch.nn.Module):
    """Stands in for the train model in `Trainer._optimizer_step`: records each micro-batch's task and texts."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.seen: list[tuple[str, list[str]]] = []

    def forward(self, batch, noise):
        self.seen.append((batch["task"], list(batch["texts"])))
        return {"loss": self.weight**2 + 1.0}


@pytest.mark.parametrize(("edit_dropout", "t2i_dropout"), [(0.99, 0.0), (0.0, 0.99)])
def test_prompt_dropout_rate_follows_the_task(tmp_path, monkeypatch, edit_dropout, t2i_dropout):
    """Edit instructions drop at `data.edit_prompt_dropout`, text-to-image captions at `data.prompt_dropout`."""
    from deepgen_core.train import trainer as trainer_module

    reset_accelerate()
    overrides = {"grad_accum": 8, "data.task_cycle": "[1, 1]", "data.edit_prompt_dropout": edit_dropout, "data.prompt_dropout": t2i_dropout}
    trainer = trainer_module.Trainer(tiny_config("sft", tiny_data(tmp_path / "data"), tmp_path / "run", **overrides))
    monkeypatch.setattr(trainer_module, "draw_step_noise", lambda *args: None)
    model, given = _TextRecorder(), []

    def batches():
        for batch in trainer._batches(0, model):
            given.append((batch["task"], list(batch["texts"])))
            yield batch

    trainer._optimizer_step(model, torch.optim.SGD(model.parameters(), lr=0.0), batches())
    assert [task for task, _ in model.seen] == [task for task, _ in given] == ["image2image", "text2image"] * 4
    for (task, texts), (_, original) in zip(model.seen, given):
        assert all(original)
        dropped = edit_dropout if task == "image2image" else t2i_dropout
        assert texts == ([""] * len(original) if dropped else original), task


def test_interrupted_save_never_leaves_a_valid_checkpoint(tmp_path, monkeypatch):
    from accelerate import Accelerator

    from deepgen_core.train import checkpointing

    reset_accelerate()
    acc = Accelerator(cpu=True)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    manager = checkpointing.CheckpointManager(tmp_path, acc, keep_last=2)
    manager.save(1, model, optimizer, scheduler, {"consumed_micro_batches": 1})
    real_save = checkpointing.save_file

    def dying_save(tensors, path):  # writes half a file, then the "machine dies"
        Path(path).write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpointing, "save_file", dying_save)
    with pytest.raises(KeyboardInterrupt):
        manager.save(2, model, optimizer, scheduler, {"consumed_micro_batches": 2})
    monkeypatch.setattr(checkpointing, "save_file", real_save)
    assert manager.latest().name == "step-00000001"
    assert (tmp_path / ".tmp-step-00000002").is_dir()
    manager.remove_partial()
    assert not (tmp_path / ".tmp-step-00000002").exists()
    for step in (2, 3, 4):
        manager.save(step, model, optimizer, scheduler, {"consumed_micro_batches": step})
    assert [p.name for p in manager.checkpoints()] == ["step-00000003", "step-00000004"]  # keep_last=2
    saved = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    state = manager.load(manager.latest(), model, optimizer, scheduler)
    assert state["step"] == 4 and state["consumed_micro_batches"] == 4
    assert torch.equal(model.weight.detach(), saved)
