"""Step caching (`acceleration.step_cache`, `enable_fast_path(step_cache=)`) on the tiny model, on CPU."""

from __future__ import annotations

import pytest
import torch

from deepgen_core.acceleration.step_cache import StepCache, check_step_cache
from deepgen_core.cli import build_parser, check_generate_args
from deepgen_core.errors import DeepGenInputError
from deepgen_core.pipeline import DeepGenPipeline
from deepgen_core.presets import tiny_components

STEPS = 8


@pytest.fixture(scope="module")
def pipe() -> DeepGenPipeline:
    return DeepGenPipeline.from_components(tiny_components(seed=3))


def _latents(pipe: DeepGenPipeline, step_cache: float | None = None, **kwargs) -> torch.Tensor:
    if step_cache is not None:
        pipe.enable_fast_path(step_cache=step_cache)
    try:
        return pipe(["a red cube", "a blue ball"], height=64, width=64, num_inference_steps=STEPS, guidance_scale=4.0,
                    generator=torch.Generator().manual_seed(0), output_type="latent", **kwargs).latents
    finally:
        pipe.enable_fast_path(step_cache=0)


def _edit_image() -> list:
    from PIL import Image

    return [[Image.new("RGB", (64, 64), (200, 30, 30))], [Image.new("RGB", (64, 64), (30, 30, 200))]]


@pytest.mark.parametrize("edit", [False, True], ids=["t2i", "edit"])
def test_off_is_bit_identical(pipe, edit):
    kwargs = {"image": _edit_image()} if edit else {}
    plain = _latents(pipe, **kwargs)
    assert torch.equal(_latents(pipe, step_cache=0.0, **kwargs), plain)
    assert pipe.last_step_caches == []


@pytest.mark.parametrize("edit", [False, True], ids=["t2i", "edit"])
def test_threshold_skips_calls_and_stays_close(pipe, edit):
    kwargs = {"image": _edit_image()} if edit else {}
    plain = _latents(pipe, **kwargs)
    cached = _latents(pipe, step_cache=0.2, **kwargs)
    (cache,) = pipe.last_step_caches  # one call per step: the [uncond ; cond] CFG rows share one decision
    assert len(cache.computed) == STEPS and 0 < cache.skipped < STEPS - 2
    # Tolerance: a 10% relative L2 error of the final latents (measured 4% here: 5 of 8 calls skipped).
    assert not torch.equal(cached, plain)
    assert (cached - plain).norm() / plain.norm() < 0.1


def test_first_and_last_steps_always_computed(pipe):
    _latents(pipe, step_cache=1.0)  # the largest threshold: every middle step may be skipped
    (cache,) = pipe.last_step_caches
    assert cache.computed[0] and cache.computed[-1]
    assert cache.skipped >= STEPS - 3


def test_unit_decisions_with_a_counting_velocity():
    calls = []

    def velocity(latents, context, pooled, timestep, refs, modulation=None):
        calls.append(float(timestep[0]))
        return torch.full_like(latents, float(len(calls)))

    transformer = tiny_components(seed=0).transformer.eval()
    cache = StepCache(velocity, transformer, num_steps=5, threshold=1.0)
    latents = torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(0))
    pooled = torch.randn(2, transformer.config.pooled_projection_dim)
    with torch.no_grad():
        outs = [cache(latents, None, pooled, torch.tensor([t, t]), None) for t in (1000.0, 990.0, 980.0, 970.0, 960.0)]
    assert cache.computed == [True, False, False, False, True]
    assert calls == [1000.0, 960.0]
    assert torch.equal(outs[2], outs[0]) and float(outs[-1][0, 0, 0, 0]) == 2.0


def test_cfg_branches_called_apart_share_decisions(pipe):
    """Prompt and negative of different lengths: two DiT calls a step, both fresh or both reused."""
    from dataclasses import replace

    with torch.no_grad():
        encoded = pipe.encode_prompt(["a red cube"], [""])
    embeddings = replace(encoded, negative_prompt_embeds=encoded.negative_prompt_embeds[:, :-2])  # as if encoded apart
    pipe.enable_fast_path(step_cache=0.2)
    try:
        with torch.no_grad():
            pipe.denoise(pipe.prepare_latents(1, 64, 64, torch.Generator().manual_seed(0)), embeddings, None, STEPS, 4.0)
    finally:
        pipe.enable_fast_path(step_cache=0)
    leader, follower = pipe.last_step_caches
    assert follower.computed == leader.computed and 0 < leader.skipped


def test_grad_enabled_runs_the_plain_function(pipe):
    pipe.enable_fast_path(step_cache=0.5)
    try:
        fn = pipe.velocity_function()
        with torch.enable_grad():
            assert pipe.cached_velocities(fn, STEPS, 2) == [fn, fn]
        with torch.no_grad():
            assert all(isinstance(c, StepCache) for c in pipe.cached_velocities(fn, STEPS, 2))
    finally:
        pipe.enable_fast_path(step_cache=0)


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), "0.1", True])
def test_bad_threshold_is_a_clear_error(pipe, bad):
    with pytest.raises(DeepGenInputError, match=r"step_cache must be a number >= 0 and <= 1"):
        pipe.enable_fast_path(step_cache=bad)
    assert pipe._step_cache == 0.0
    assert check_step_cache(0.1) == 0.1


def test_cli_flag_is_checked_before_the_model_loads(tmp_path):
    args = build_parser().parse_args(["generate", "--prompt", "a red cube", "--out", str(tmp_path / "x.png"), "--step-cache", "3"])
    with pytest.raises(DeepGenInputError, match=r"^--step-cache must be a number >= 0 and <= 1, got 3"):
        check_generate_args(args)
    ok = build_parser().parse_args(["generate", "--prompt", "a red cube", "--out", str(tmp_path / "x.png"), "--step-cache", "0.1"])
    check_generate_args(ok)
    assert ok.step_cache == 0.1


def test_cli_flag_reaches_the_pipeline(tmp_path, monkeypatch):
    from deepgen_core.cli import main

    seen = {}
    original = DeepGenPipeline.enable_fast_path
    monkeypatch.setattr(DeepGenPipeline, "enable_fast_path", lambda self, **kw: (seen.update(kw), original(self, **kw))[1])
    out = tmp_path / "cached.png"
    assert main(["generate", "--prompt", "a red cube", "--steps", "4", "--step-cache", "0.1", "--out", str(out)]) == 0
    assert seen["step_cache"] == 0.1 and out.is_file()
