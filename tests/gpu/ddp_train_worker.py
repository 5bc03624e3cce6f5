"""One rank of the 2-GPU NCCL training check (started by torchrun from tests/gpu/test_gpu_path.py).

usage: python -m torch.distributed.run --standalone --nproc_per_node 2 ddp_train_worker.py DATA RUN_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from engine.train import TrainConfig, train  # noqa: E402


def main() -> int:
    data, run_dir = sys.argv[1], sys.argv[2]
    cfg = TrainConfig(data=data, mpp=0.5, epochs=1, batch_size=16, lr=3e-3, log_every=1, seed=1, device="cuda")
    train(cfg, run_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
