"""Cost that grows linearly: `drray explain` over N and 10N images, predict-only and with maps.

For each mode (predict-only, explain) the same pipeline runs over N and over 10N images in one
process and one Ray instance, and prints images/s and the peak resident memory of the driver
and of the Ray worker processes at each size. With start-up amortised (N large enough, tiny
images and model), a streaming pipeline keeps images/s at 10N within 0.9x of N and peak memory
within 1.2x: nothing in it grows with the archive.

Images/s counts from the call to its return (Ray Data start-up included), so the first, smaller
run pays the same fixed cost as the second: the ratio is conservative for the pipeline.

    python benchmarks/explain_scale.py                 # N=300, 10N=3000, test_resnet at 64 px, 2 CPUs
    python benchmarks/explain_scale.py --n 1000 --cpus 8
    python benchmarks/explain_scale.py --smoke-test
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from explain_pipeline import PeakRSS, make_inputs  # noqa: E402  (the benchmark next door builds the inputs)

MIB = 1024 * 1024


def run(manifest: Path, model_dir: Path, out: Path, methods: list[str], args) -> dict:
    from drray.config import CamConfig, ExplainConfig
    from drray.explain.pipeline import explain

    job = ExplainConfig(batch_size=args.batch_size, num_actors=args.actors, cpus_per_actor=args.actor_cpus,
                        torch_threads=args.torch_threads, sanity_images=0)  # its fixed per-run cost is not per image
    with PeakRSS() as mem:
        start = time.perf_counter()
        result = explain(manifest, model_dir, out, methods=methods, cam=CamConfig(target_stride=args.stride),
                         job=job, decode_cpus=args.decode_cpus)
        seconds = time.perf_counter() - start
    return {"images": result.images, "rows": result.rows_written, "seconds": seconds,
            "images_per_s": result.images / seconds, "driver_mib": mem.driver / MIB,
            "largest_worker_mib": mem.worker_max / MIB, "workers_total_mib": mem.workers_total / MIB}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=300, help="N (the second run explains 10N)")
    p.add_argument("--distinct", type=int, default=200, help="distinct photographs rendered (listed repeatedly)")
    p.add_argument("--photo-size", type=int, default=128)
    p.add_argument("--size", type=int, default=64, help="network input side")
    p.add_argument("--backbone", default="test_resnet")
    p.add_argument("--methods", default="gradcam")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--cpus", type=int, default=2)
    p.add_argument("--actors", type=int, default=2)  # as explain_pipeline.py: two single-thread actors on 2 CPUs
    p.add_argument("--actor-cpus", type=float, default=0.5)
    p.add_argument("--decode-cpus", type=float, default=0.5)
    p.add_argument("--stride", type=int, default=None, choices=(8, 16, 32),
                   help="CAM target stride (default: drray's, 8); 32 is the last stage")
    p.add_argument("--torch-threads", type=int, default=None)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--smoke-test", action="store_true", help="tiny sizes: checks the script runs")
    args = p.parse_args()
    if args.smoke_test:
        args.n, args.distinct, args.photo_size, args.size, args.batch_size = 4, 8, 96, 32, 4
    methods = [m for m in args.methods.split(",") if m]

    import logging

    import ray

    logging.basicConfig(level=logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix="drray_explain_scale_"))
    results: dict[str, dict[str, dict]] = {}
    try:
        small, large, model_dir = make_inputs(work, args)
        ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
        for mode, m in (("predict-only", []), ("explain", methods)):
            results[mode] = {"N": run(small, model_dir, work / f"{mode}_n", m, args),
                             "10N": run(large, model_dir, work / f"{mode}_10n", m, args)}
        ray.shutdown()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"\ndrray explain at N={args.n} and 10N={10 * args.n} images ({args.backbone} at {args.size} px, "
          f"batch {args.batch_size}, {args.cpus} CPUs)")
    print(f"  {'mode':<13}{'size':>5}{'images/s':>10}{'driver MiB':>12}{'largest worker':>16}{'all workers':>13}")
    for mode, sizes in results.items():
        for size, r in sizes.items():
            print(f"  {mode:<13}{size:>5}{r['images_per_s']:>10.1f}{r['driver_mib']:>12.0f}"
                  f"{r['largest_worker_mib']:>16.0f}{r['workers_total_mib']:>13.0f}")
        n, ten = sizes["N"], sizes["10N"]
        print(f"  {mode:<13}10N/N: images/s {ten['images_per_s'] / n['images_per_s']:.2f} (goal >= 0.9), "
              f"driver {ten['driver_mib'] / n['driver_mib']:.2f}, largest worker "
              f"{ten['largest_worker_mib'] / n['largest_worker_mib']:.2f}, all workers "
              f"{ten['workers_total_mib'] / n['workers_total_mib']:.2f} (goal <= 1.2)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
