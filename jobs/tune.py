"""`ray job submit` entry point for `drray tune` (no logic: the CLI parses, drray.training.tune runs).

    ray job submit --address http://HEAD:8265 --runtime-env jobs/runtime_env.yaml -- \
        python jobs/tune.py --config configs/aptos2019.yaml --manifest /data/aptos/manifest.parquet \
        --out /data/runs/aptos train.storage_path=s3://bucket/drray

Inside a Ray job RAY_ADDRESS is set, so every trial runs on the cluster that received the job.
`python` must be the cluster's interpreter with drray installed (see jobs/runtime_env.yaml).
An interrupted search continues where it stopped with `tune.resume=true`.
"""

from __future__ import annotations

import sys

from drray.cli import main

if __name__ == "__main__":
    sys.exit(main(["tune", *sys.argv[1:]]))
