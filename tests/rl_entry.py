"""Test-only launcher for `deepgen train rl` under torchrun: skips DeepSpeed's shm-comm JIT build on the CPU
(~40-60 s on a fresh machine; env note 'DeepSpeed 0.19.8 on the CPU'). Never used by the library.

- DEEPGEN_TEST_PID_DIR=dir: write `<dir>/rank<r>.pid`, so a test can kill one rank.
- DEEPGEN_TEST_STEP_SLEEP=s: sleep s seconds after every RL step, so a test can kill a rank between steps.
"""

import os
import sys
import time

import deepspeed.comm.torch  # noqa: F401

sys.modules["deepspeed.comm.torch"].build_shm_op = lambda: None

from deepgen_core.cli import main  # noqa: E402
from deepgen_core.train.rl import trainer  # noqa: E402

if os.environ.get("DEEPGEN_TEST_PID_DIR"):
    with open(os.path.join(os.environ["DEEPGEN_TEST_PID_DIR"], f"rank{os.environ['RANK']}.pid"), "w") as f:
        f.write(str(os.getpid()))

_sleep = float(os.environ.get("DEEPGEN_TEST_STEP_SLEEP", "0"))
if _sleep:
    _train_step = trainer.RLTrainer.train_step

    def _slow_step(self, *args, **kwargs):
        out = _train_step(self, *args, **kwargs)
        time.sleep(_sleep)
        return out

    trainer.RLTrainer.train_step = _slow_step

sys.exit(main(sys.argv[1:]))
