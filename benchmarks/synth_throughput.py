"""Synthetic fundus throughput: images per second per core at 512 px (render + JPEG encode).

Runs in one process on one thread (OpenCV pinned to a single thread), so the figure is per core;
a Ray run scales it by the CPUs the tasks get. Prints the rate by wall clock and by this process's
CPU time (the second is the per-core figure on a machine shared with other jobs), and the share of
time per stage, to show where an optimisation would pay.

    python benchmarks/synth_throughput.py              # 20 images at 512 px
    python benchmarks/synth_throughput.py --smoke-test # 3 images at 128 px
"""

from __future__ import annotations

import argparse
import time

import cv2
import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20, help="images to render")
    parser.add_argument("--size", type=int, default=512, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke-test", action="store_true", help="tiny run (3 images at 128 px)")
    args = parser.parse_args()
    if args.smoke_test:
        args.n, args.size = 3, 128

    from drray.config import SynthConfig
    from drray.data.synth import render
    from drray.data.synth.generate import _jpeg
    from drray.data.synth.photometry import expose, illumination, sample_camera
    from drray.data.synth.render import compose

    cv2.setNumThreads(1)
    cfg = SynthConfig(n=args.n, size=args.size, seed=args.seed)
    render(args.seed, 0, cfg)  # warm-up: imports, allocator

    t_compose = t_camera = t_jpeg = 0.0
    grades = []
    start, cpu_start = time.perf_counter(), time.process_time()
    for i in range(args.n):
        # The same steps as drray.data.synth.render, timed apart.
        t0 = time.perf_counter()
        layers = compose(args.seed, i, cfg)
        t1 = time.perf_counter()
        r_camera = layers.camera_rng
        camera = sample_camera(r_camera, cfg.size, layers.patient.camera_gains)
        light, haze = illumination(r_camera, layers.geo)
        image = expose(layers.refl, light, haze, camera, layers.geo, r_camera)
        t2 = time.perf_counter()
        _jpeg(image, layers.patient.jpeg_quality)
        t3 = time.perf_counter()
        t_compose += t1 - t0
        t_camera += t2 - t1
        t_jpeg += t3 - t2
        grades.append(layers.grade)
    total = time.perf_counter() - start
    cpu = time.process_time() - cpu_start

    grade_counts = np.bincount(grades, minlength=5).tolist()
    print(f"synth throughput: {args.n} images at {args.size} px, grades {grade_counts}, render + JPEG, 1 thread")
    print(f"  {args.n / total:.1f} images/s/core by wall clock ({1000 * total / args.n:.1f} ms per image)")
    print(f"  {args.n / cpu:.1f} images/s/core by CPU time ({1000 * cpu / args.n:.1f} ms per image)")
    for name, t in (("anatomy + lesions", t_compose), ("camera", t_camera), ("JPEG encode", t_jpeg)):
        print(f"  {name:18s} {100 * t / total:5.1f}%")


if __name__ == "__main__":
    main()
