"""`drray explain` end to end: the Ray Data pipeline against a plain loop, predict-only, and memory at N vs 10N.

Measured side by side in one run, on the same images, model, CAM method and batch size:

1. plain loop: one process, `cpus` torch threads, batch after batch: decode + preprocess
   (drray.data.decode.decode_batch), predict + CAM + scores + overlay (drray.explain.actor.BatchExplainer, the
   same callable the actors run), Parquet part files (drray.explain.sink.write_part), with the
   local Ray instance idle beside it.
2. `explain(...)` on a local Ray instance of `cpus` CPUs (decode tasks, actor pool, write tasks).
3. `explain(..., methods=())`: the same pipeline predicting only.
4. `explain(...)` on N images, for memory: peak RSS of the driver and of the Ray worker
   processes, sampled every 0.1 s, at N and at 10N (the 10N figures come from run 2).

Runs 1-3 repeat in interleaved rounds (--rounds) and the medians count: the machine's load
drifts, and interleaving makes the drift hit every variant alike.

Goals: pipeline / loop images per second >= 0.8; explain / predict-only time <= 1.15; peak RSS
at 10N within 1.3x of N. The images are `drray synth` photographs (rendered once, listed
repeatedly in the manifest under new ids when more are asked for: decode cost is the same and
both sides read the same files). Random weights: throughput does not depend on them.

    python benchmarks/explain_pipeline.py                  # N=120 (10N=1200), resnet18 at 128 px, 2 CPUs, 2 actors
    python benchmarks/explain_pipeline.py --n 400 --cpus 8 --actors 3
    python benchmarks/explain_pipeline.py --smoke-test     # tiny model and set: checks the script runs
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
os.environ.setdefault("TQDM_DISABLE", "1")


# ------------------------------------------------------------------------------------ inputs
def make_inputs(work: Path, args) -> tuple[Path, Path, Path]:
    """Synthetic photographs, a manifest of N rows and one of 10N rows, and a model dir."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from drray.config import PreprocessConfig, SynthConfig
    from drray.data.ingest import ingest, read_manifest
    from drray.models.model import create_model, save_model
    from drray.schema import MANIFEST_SCHEMA
    from drray.data.synth import generate

    distinct = min(args.n * 10, args.distinct)
    generate(SynthConfig(n=distinct, size=args.photo_size, seed=0), work / "synth", parallel=False)
    ingest("synth", work / "synth", work / "run", seed=0, parallel=False)  # Ray starts later
    base = read_manifest(work / "run" / "manifest.parquet")
    paths = []
    for n in (args.n, 10 * args.n):
        reps = -(-n // len(base))
        df = pd.concat([base.assign(image_id=base["image_id"] + f"-{k}") for k in range(reps)]).head(n)
        path = work / "run" / f"manifest_{n}.parquet"
        pq.write_table(pa.Table.from_pandas(df.reset_index(drop=True), schema=MANIFEST_SCHEMA,
                                            preserve_index=False), path)
        paths.append(path)
    model = create_model(args.backbone, image_size=args.size, preprocess=PreprocessConfig(image_size=args.size))
    save_model(model, work / "model")
    return paths[0], paths[1], work / "model"


# ------------------------------------------------------------------------------------ memory
class PeakRSS:
    """Peak resident memory of this process and of its Ray instance's worker processes (`ray::...`)."""

    def __init__(self, interval_s: float = 0.1):
        import psutil  # vendored by Ray (ray/thirdparty_files), importable once ray is imported

        self.psutil = psutil
        self.interval_s = interval_s
        self.driver = 0
        self.worker_max = 0
        self.workers_total = 0
        self.worker_count = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        psutil = self.psutil
        me = psutil.Process()
        self.driver = max(self.driver, me.memory_info().rss)
        total = count = 0
        # Only this Ray instance's workers: the local instance is started by this process, so its
        # workers are among its descendants (other Ray instances on the machine are not).
        for p in me.children(recursive=True):
            try:
                name, mem = p.name(), p.memory_info()
            except psutil.Error:  # a worker that exited between listing and reading
                continue
            if name.startswith("ray::"):
                total += mem.rss
                count += 1
                self.worker_max = max(self.worker_max, mem.rss)
        self.workers_total = max(self.workers_total, total)
        self.worker_count = max(self.worker_count, count)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval_s)

    def __enter__(self) -> "PeakRSS":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


# ----------------------------------------------------------------------------------- runners
def manifest_batch(chunk) -> dict:
    """Manifest rows -> the numpy batch drray.data.dataset.build_dataset hands decode_batch (label -1 = unknown)."""
    import numpy as np

    from drray.data.decode import PASSTHROUGH_COLUMNS
    from drray.schema import MASK_COLUMNS

    batch = {}
    for c in (*PASSTHROUGH_COLUMNS, *MASK_COLUMNS):
        if c == "label":
            batch[c] = chunk[c].fillna(-1).to_numpy(np.int16)
        elif c in chunk.columns:
            batch[c] = np.asarray([v if isinstance(v, str) else "" for v in chunk[c]], dtype=object)
    return batch


def plain_loop(manifest: Path, model_dir: Path, out: Path, args) -> float:
    """Seconds for the single-process loop over every image of `manifest` (model loading included)."""
    import torch

    from drray.config import CamConfig, ExplainConfig
    from drray.data.dataset import load_manifest, manifest_base_dir
    from drray.data.decode import decode_batch
    from drray.explain.sink import write_part
    from drray.explain.actor import BatchExplainer
    from drray.models.card import CARD_FILE, ModelCard

    torch.set_num_threads(args.cpus)
    start = time.perf_counter()
    df = load_manifest(manifest)
    base = manifest_base_dir(manifest)
    prep = ModelCard.read(model_dir / CARD_FILE).preprocess_config()
    cam = CamConfig(target_stride=args.stride)
    job = ExplainConfig(batch_size=args.batch_size, gpus_per_actor=args.gpus_per_actor, sanity_images=0)
    explainer = BatchExplainer(str(model_dir), args.methods, cam, job)
    for k, lo in enumerate(range(0, len(df), args.batch_size)):
        batch = manifest_batch(df.iloc[lo:lo + args.batch_size])
        # The same work as the pipeline's decode step: the colour crop for the overlay too.
        decoded = decode_batch(batch, cfg=prep, with_masks=True, base_dir=base, photo_size=cam.overlay_size)
        write_part(out, f"loop-{k:06d}", explainer(decoded))
    return time.perf_counter() - start


def pipeline(manifest: Path, model_dir: Path, out: Path, methods: list[str], args) -> tuple[float, int]:
    from drray.config import CamConfig, ExplainConfig
    from drray.explain.pipeline import explain

    job = ExplainConfig(batch_size=args.batch_size, num_actors=args.actors, cpus_per_actor=args.actor_cpus,
                        torch_threads=args.torch_threads, gpus_per_actor=args.gpus_per_actor,
                        sanity_images=0)  # its fixed per-run cost is not per image
    start = time.perf_counter()
    result = explain(manifest, model_dir, out, methods=methods, cam=CamConfig(target_stride=args.stride), job=job,
                     decode_cpus=args.decode_cpus)
    return time.perf_counter() - start, result.rows_written


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=120, help="N: memory is compared at N and 10N; throughput at 10N")
    p.add_argument("--distinct", type=int, default=300, help="distinct photographs rendered")
    p.add_argument("--photo-size", type=int, default=256, help="side of the synthetic photographs")
    p.add_argument("--size", type=int, default=128, help="network input side")
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--methods", default="gradcam")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--cpus", type=int, default=2, help="CPUs of the Ray instance and torch threads of the loop")
    # Two single-thread actors beat one two-thread actor on 2 CPUs (0.84 vs 0.68 of the loop, benchmarks/README.md).
    p.add_argument("--actors", type=int, default=2)
    p.add_argument("--actor-cpus", type=float, default=0.5)
    p.add_argument("--decode-cpus", type=float, default=0.5)
    p.add_argument("--stride", type=int, default=None, choices=(8, 16, 32),
                   help="CAM target stride (default: drray's, 8); 32 is the last stage")
    p.add_argument("--torch-threads", type=int, default=None, help="torch threads per actor (default: Ray's)")
    p.add_argument("--gpus-per-actor", type=float, default=0.0, help="GPUs per explain actor (0: CPU)")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds of loop, explain, predict-only")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument("--smoke-test", action="store_true", help="tiny model and set: checks the script runs")
    args = p.parse_args()
    if args.smoke_test:
        args.n, args.distinct, args.photo_size, args.size, args.backbone = 4, 16, 96, 64, "test_resnet"
        args.batch_size, args.rounds = 4, 1
    args.methods = [m for m in args.methods.split(",") if m]

    import logging
    import statistics

    logging.basicConfig(level=logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix="drray_explain_bench_"))
    n_large = 10 * args.n
    rounds = []
    try:
        small, large, model_dir = make_inputs(work, args)
        import ray

        ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
        with PeakRSS() as mem_small:
            pipeline(small, model_dir, work / "out_small", args.methods, args)
        for r in range(args.rounds):
            # Interleaved, so drift in the machine's load hits every variant alike; the first
            # round's explain run also gives the 10N memory figures.
            loop_s = plain_loop(large, model_dir, work / f"out_loop{r}", args)
            with PeakRSS() as mem:
                explain_s, rows = pipeline(large, model_dir, work / f"out_explain{r}", args.methods, args)
            predict_s, _ = pipeline(large, model_dir, work / f"out_predict{r}", [], args)
            if r == 0:
                mem_large = mem
            rounds.append({"loop_s": loop_s, "explain_s": explain_s, "predict_s": predict_s, "rows": rows})
        ray.shutdown()
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    def median(key: str) -> float:
        return statistics.median(r[key] for r in rounds)

    mib = 1024 * 1024
    fig = {
        "images": n_large,
        "methods": args.methods,
        "backbone": args.backbone,
        "size": args.size,
        "batch_size": args.batch_size,
        "cpus": args.cpus,
        "rounds": rounds,
        "loop_images_per_s": n_large / median("loop_s"),
        "explain_images_per_s": n_large / median("explain_s"),
        "predict_only_images_per_s": n_large / median("predict_s"),
        "explain_vs_loop": statistics.median(r["loop_s"] / r["explain_s"] for r in rounds),
        "explain_vs_predict_only_time": statistics.median(r["explain_s"] / r["predict_s"] for r in rounds),
        "n_small": args.n,
        "driver_peak_rss_mib": [mem_small.driver / mib, mem_large.driver / mib],
        "largest_worker_peak_rss_mib": [mem_small.worker_max / mib, mem_large.worker_max / mib],
        "workers_total_peak_rss_mib": [mem_small.workers_total / mib, mem_large.workers_total / mib],
        "worker_processes": [mem_small.worker_count, mem_large.worker_count],
    }
    print(f"\ndrray explain, {n_large} images ({args.backbone} at {args.size} px, {', '.join(args.methods)}, "
          f"batch {args.batch_size}, {args.cpus} CPUs), median of {args.rounds} interleaved rounds")
    print(f"  plain loop            {fig['loop_images_per_s']:8.1f} images/s")
    print(f"  explain pipeline      {fig['explain_images_per_s']:8.1f} images/s   "
          f"pipeline/loop = {fig['explain_vs_loop']:.2f}  (goal >= 0.8)")
    print(f"  predict-only pipeline {fig['predict_only_images_per_s']:8.1f} images/s   "
          f"explain/predict time = {fig['explain_vs_predict_only_time']:.2f}  (goal <= 1.15)")
    for i, r in enumerate(rounds):
        print(f"    round {i}: loop {r['loop_s']:.1f} s, explain {r['explain_s']:.1f} s, "
              f"predict-only {r['predict_s']:.1f} s")
    print(f"  peak RSS, MiB            N={args.n:<6} 10N={n_large:<6} 10N/N (goal <= 1.3)")
    for label, key in (("driver", "driver_peak_rss_mib"), ("largest worker", "largest_worker_peak_rss_mib"),
                       ("all workers", "workers_total_peak_rss_mib")):
        a, b = fig[key]
        print(f"  {label:<22}{a:8.0f} {b:10.0f}   {b / a:.2f}")
    a, b = fig["worker_processes"]
    print(f"  (Ray worker processes at the peak: {a} at N, {b} at 10N; the total follows their number,"
          " which Ray bounds by the CPUs, not by the data)")
    if args.json:
        args.json.write_text(json.dumps(fig, indent=2))


if __name__ == "__main__":
    main()
