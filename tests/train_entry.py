"""Test-only launcher entry for `deepgen train` under torchrun (never used by the library).

- Skips DeepSpeed's shm-comm JIT build (~40-60 s on a fresh machine; env note §DeepSpeed on the CPU).
- DEEPGEN_TEST_STEP_SLEEP=s: sleep s seconds after every optimizer step, so a test can kill a run mid-way.
- DEEPGEN_TEST_HANG_AT_SAVE=n: when step n's checkpoint is about to be finalised, touch `<root>/saving-n` and
  hang, so a test can SIGKILL the run while a checkpoint is half written.
"""

import os
import sys
import time

import deepspeed.comm.torch  # noqa: F401

sys.modules["deepspeed.comm.torch"].build_shm_op = lambda: None

from deepgen_core.train import checkpointing, trainer

_sleep = float(os.environ.get("DEEPGEN_TEST_STEP_SLEEP", "0"))
_hang = int(os.environ.get("DEEPGEN_TEST_HANG_AT_SAVE", "0"))

if _sleep:
    _step = trainer.Trainer._optimizer_step

    def _slow_step(self, *args, **kwargs):
        out = _step(self, *args, **kwargs)
        time.sleep(_sleep)
        return out

    trainer.Trainer._optimizer_step = _slow_step

if _hang:
    _finalize = checkpointing.CheckpointManager._finalize

    def _hanging_finalize(self, tmp, final, state):
        if state["step"] == _hang:
            (self.root / f"saving-{_hang}").touch()
            time.sleep(600)
        return _finalize(self, tmp, final, state)

    checkpointing.CheckpointManager._finalize = _hanging_finalize

from deepgen_core.cli import main

sys.exit(main(sys.argv[1:]))
