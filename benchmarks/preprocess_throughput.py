"""Single-core throughput of `drray.data.preprocess.prepare` on scikit-image's 1411 px fundus photograph.

Prints images/s for each variant and its cost relative to the plain crop+resize, all measured
side by side in this process (OpenCV pinned to one thread).

    python benchmarks/preprocess_throughput.py [--size 384] [--seconds 3] [--smoke-test]
"""

from __future__ import annotations

import argparse
import statistics
import time

import cv2
import numpy as np
import skimage.data

from drray.config import PreprocessConfig
from drray.data.preprocess import find_fundus, prepare


def rate(fn, img: np.ndarray, seconds: float) -> tuple[float, float]:
    """Median images/s over 5 windows of about seconds/5 each: (per wall second, per CPU second).

    CPU time is the steadier figure on a shared machine: waiting for a core does not count.
    """
    fn(img)  # warm-up: first calls pay for OpenCV's lazy initialisation
    wall, cpu = [], []
    for _ in range(5):
        n, t0, c0 = 0, time.perf_counter(), time.process_time()
        while True:
            fn(img)
            n += 1
            dt = time.perf_counter() - t0
            if dt >= seconds / 5:
                break
        wall.append(n / dt)
        cpu.append(n / max(time.process_time() - c0, 1e-9))
    return statistics.median(wall), statistics.median(cpu)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=384, help="prepared image side")
    ap.add_argument("--seconds", type=float, default=3.0, help="measuring time per variant")
    ap.add_argument("--smoke-test", action="store_true", help="tiny run, to check the script works")
    args = ap.parse_args()
    seconds = 0.1 if args.smoke_test else args.seconds
    cv2.setNumThreads(1)
    img = skimage.data.retina()
    variants = {
        "find_fundus only": lambda a: find_fundus(a),
        "prepare crop": lambda a: prepare(a, PreprocessConfig(image_size=args.size)),
        "prepare crop + ben_graham": lambda a: prepare(a, PreprocessConfig(image_size=args.size, ben_graham=True)),
        "prepare no crop": lambda a: prepare(a, PreprocessConfig(image_size=args.size, crop=False)),
    }
    h, w = img.shape[:2]
    print(f"prepare() on a {w}x{h} RGB fundus photograph -> {args.size}x{args.size}, 1 OpenCV thread")
    rates = {name: rate(fn, img, seconds) for name, fn in variants.items()}
    base = rates["prepare crop"][1]
    print(f"  {'':28s} {'images/s':>9s} {'per CPU s':>10s} {'CPU ms':>7s}  CPU time vs 'prepare crop'")
    for name, (wall, cpu) in rates.items():
        print(f"  {name:28s} {wall:9.1f} {cpu:10.1f} {1000 / cpu:7.2f}  x{base / cpu:4.2f}")


if __name__ == "__main__":
    main()
