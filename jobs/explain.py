"""`ray job submit` entry point for `drray explain` (no logic: the CLI parses, drray.explain runs).

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python jobs/explain.py --manifest runs/demo/manifest.parquet --model runs/demo/model \
        --methods gradcam,gradcam++ --out runs/demo explain.num_actors=4 explain.gpus_per_actor=1

Inside a Ray job RAY_ADDRESS is set, so the pipeline runs on the cluster that received the job.
Rerunning the same job resumes: images already in OUT/explanations are skipped.
"""

from __future__ import annotations

import sys

from drray.cli import main

if __name__ == "__main__":
    sys.exit(main(["explain", *sys.argv[1:]]))
