"""CFG parallelism (deepgen_core.parallel.cfg): DeepGen-Tiny on 2 and 3 CPU processes (torchrun, gloo) returns the
one-process pipeline's latents on every rank."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cfg_parallel_entry import generate
from safetensors.torch import load_file
from train_helpers import free_port

from deepgen_core.errors import DeepGenInputError
from deepgen_core.parallel.cfg import CFGParallel, row_slices
from deepgen_core.pipeline import DeepGenPipeline
from deepgen_core.presets import deepgen_tiny_dir

REPO = Path(__file__).resolve().parents[1]
# One DiT row computed alone or inside a batch of two differs only by the GEMMs' summation order (fp32): about 1e-7
# per call, growing over 6 steps of CFG 4; the pixels stay within one uint8 level.
ATOL = 2e-4  # measured: t2i 8.6e-6, edit 4.8e-5, the batch of two exact (2 rows per rank)


@pytest.fixture(scope="module")
def one_process() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return generate(DeepGenPipeline.from_pretrained(deepgen_tiny_dir(), torch_dtype=torch.float32))


def _launch(out: Path, nproc: int) -> list[dict[str, torch.Tensor]]:
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
           f"--master_port={free_port()}", str(REPO / "tests" / "cfg_parallel_entry.py"), str(out)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return [load_file(str(out / f"rank{r}.safetensors")) for r in range(nproc)]


@pytest.mark.parametrize("nproc", [2, 3])
def test_cfg_parallel_equals_one_process(tmp_path, one_process, nproc):
    """2 ranks: one CFG branch each; 3 ranks: the third computes padding rows (and, for the batch of two prompts,
    ranks get 2, 2 and 0 of its 4 rows). Every rank returns the same latents, those of one process."""
    ranks = _launch(tmp_path, nproc)
    for name, expected in one_process.items():
        for r, tensors in enumerate(ranks[1:], start=1):
            assert torch.equal(tensors[name], ranks[0][name]), f"{name}: rank {r} differs from rank 0"
        torch.testing.assert_close(ranks[0][name], expected.float(), rtol=0, atol=ATOL, msg=lambda m: f"{name}: {m}")
    pixels = lambda t: (t * 255).round()  # noqa: E731
    assert (pixels(ranks[0]["t2i_pixels"]) - pixels(one_process["t2i_pixels"])).abs().max() <= 1


def test_row_slices():
    # ceil(rows / world) rows per rank, the last ranks short or empty.
    assert row_slices(2, 2) == [(0, 1), (1, 2)]
    assert row_slices(4, 3) == [(0, 2), (2, 4), (4, 4)]
    assert row_slices(5, 2) == [(0, 3), (3, 5)]
    assert row_slices(2, 8)[2:] == [(2, 2)] * 6


def test_needs_an_initialised_process_group():
    with pytest.raises(DeepGenInputError, match="init_process_group"):
        CFGParallel()
