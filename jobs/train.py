"""`ray job submit` entry point for `drray train` (no logic: the CLI parses, drray.training.train runs).

    ray job submit --address http://HEAD:8265 --runtime-env jobs/runtime_env.yaml -- \
        python jobs/train.py --config configs/aptos2019.yaml --manifest /data/aptos/manifest.parquet \
        --out /data/runs/aptos-b4 model.backbone=efficientnet_b4 model.head=ordinal

Inside a Ray job RAY_ADDRESS is set, so the Ray Train workers run on the cluster that received
the job. `python` must be the cluster's interpreter with drray installed (see jobs/runtime_env.yaml).
"""

from __future__ import annotations

import sys

from drray.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
