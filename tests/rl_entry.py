"""Test-only launcher for `deepgen train rl` under torchrun: skips DeepSpeed's shm-comm JIT build on the CPU
(~40-60 s on a fresh machine; env note 'DeepSpeed 0.19.8 on the CPU'). Never used by the library."""

import sys

import deepspeed.comm.torch  # noqa: F401

sys.modules["deepspeed.comm.torch"].build_shm_op = lambda: None

from deepgen_core.cli import main  # noqa: E402

sys.exit(main(sys.argv[1:]))
