"""Run by ``torchrun`` in ``test_distributed``: train a toy family and save this rank's weights.

    torchrun --standalone --nproc_per_node 2 tests/engine/ddp_worker.py OUT_DIR [--set KEY=VALUE ...]

Writes ``OUT_DIR/rank<R>.pt`` (the trained state dict) next to rank 0's run files. The device is
``$DDP_DEVICE`` (default ``cpu``; ``cuda`` gives each rank ``cuda:<LOCAL_RANK>`` and NCCL).
"""

from __future__ import annotations

import os
import sys

import torch

from engine.run import RunRequest, run


def main(argv: list[str]) -> None:
    out, overrides = argv[0], argv[1:][1::2]
    result = run(RunRequest(
        model="toy_patchcls", data="synthetic", out=out, overrides=overrides,
        device=os.environ.get("DDP_DEVICE", "cpu"), num_threads=1, quiet=True, plugins=["tests.engine.toy_families"],
    ))
    torch.save(result.net.state_dict(), os.path.join(out, f"rank{os.environ.get('RANK', '0')}.pt"))


if __name__ == "__main__":
    main(sys.argv[1:])
