"""Single-core throughput of `drray.data.preprocess.prepare`, and of decoding at the scale needed.

Part 1: `prepare` variants on scikit-image's 1411 px fundus photograph, each timed with its cost
relative to the plain crop+resize.

Part 2: a 12-Mpx camera JPEG (4000x3000, the fundus filling its height, a little sensor noise):
images/s of a full decode + `prepare` against a reduced (DCT-scaled) decode + `prepare` for the
same network size, the two timed in alternating rounds, with the ratio and how far the reduced
path's result is from the full one (crop box in original pixels, mean absolute difference in grey
levels). The same for an APTOS-sized PNG (3216x2136, field cut off top and bottom), which is
decoded whole and then box-averaged by 4 (`Image.reduce`). Both parts are measured side by side
in this process, OpenCV pinned to one thread.

    python benchmarks/preprocess_throughput.py [--size 384] [--seconds 3] [--smoke-test]
"""

from __future__ import annotations

import argparse
import io
import statistics
import time

import cv2
import numpy as np
import skimage.data
from PIL import Image

from drray.config import PreprocessConfig
from drray.data.images import decode_photo
from drray.data.preprocess import decode_side, find_fundus, prepare


def rate(fn, img, seconds: float) -> tuple[float, float]:
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


def camera_photo(width: int, height: int, fmt: str = "JPEG", field: float = 1.0) -> bytes:
    """scikit-image's retina enlarged to a field of `field` x the height on a black frame, with sensor noise.

    A field larger than the frame is cut off top and bottom, as in APTOS.
    """
    d = round(field * height)
    disc = cv2.resize(skimage.data.retina(), (d, d), interpolation=cv2.INTER_CUBIC)
    img = np.zeros((max(height, d), width, 3), np.uint8)
    x0 = (width - d) // 2
    img[(img.shape[0] - d) // 2:(img.shape[0] + d) // 2, x0:x0 + d] = disc
    img = img[(img.shape[0] - height) // 2:][:height]
    # Real photographs carry noise, which is what makes their files (and entropy decoding) big.
    noisy = img + np.random.default_rng(0).normal(0, 3.0, img.shape).astype(np.float32)
    buf = io.BytesIO()
    options = {"quality": 92} if fmt == "JPEG" else {}
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(buf, fmt, **options)
    return buf.getvalue()


def interleaved(fns: dict, data: bytes, seconds: float, rounds: int = 5) -> dict[str, tuple[float, float]]:
    """Median (wall, CPU) images/s of each fn over `rounds` alternating windows, so load drifts hit all alike."""
    for fn in fns.values():
        fn(data)
    wall: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            n, t0, c0 = 0, time.perf_counter(), time.process_time()
            while True:
                fn(data)
                n += 1
                dt = time.perf_counter() - t0
                if dt >= seconds / rounds:
                    break
            wall[name].append(n / dt)
            cpu[name].append(n / max(time.process_time() - c0, 1e-9))
    return {k: (statistics.median(wall[k]), statistics.median(cpu[k])) for k in fns}


def decode_case(size: int, seconds: float, width: int, height: int, fmt: str = "JPEG", field: float = 1.0,
                bens: tuple[bool, ...] = (False, True)) -> None:
    data = camera_photo(width, height, fmt, field)
    print(f"\ndecode + prepare of a {width}x{height} {fmt} ({len(data) / 1e6:.1f} MB) -> {size}x{size}, "
          "1 OpenCV thread, alternating rounds")
    for ben in bens:
        cfg = PreprocessConfig(image_size=size, ben_graham=ben)

        def full(d, cfg=cfg):
            photo = decode_photo(d)
            return prepare(photo.rgb, cfg)

        def reduced(d, cfg=cfg):
            photo = decode_photo(d, min_side=decode_side(cfg))
            return prepare(photo.rgb, cfg, photo.scale, photo.shape)

        rates = interleaved({"full": full, "reduced": reduced}, data, 2 * seconds)
        a, b = full(data), reduced(data)
        scale = decode_photo(data, min_side=decode_side(cfg)).scale
        grey = np.abs(a.image.astype(np.float32).mean(axis=2) - b.image.astype(np.float32).mean(axis=2))
        box = max(abs(a.box.y0 - b.box.y0), abs(a.box.x0 - b.box.x0), abs(a.box.side - b.box.side))
        label = "crop + ben_graham" if ben else "crop"
        print(f"  {label}: full {rates['full'][0]:.1f} img/s ({rates['full'][1]:.1f} per CPU s), "
              f"reduced 1/{scale} {rates['reduced'][0]:.1f} img/s ({rates['reduced'][1]:.1f} per CPU s): "
              f"x{rates['reduced'][0] / rates['full'][0]:.2f} wall, x{rates['reduced'][1] / rates['full'][1]:.2f} CPU")
        print(f"    reduced vs full: crop box within {box} px (box {b.box} vs {a.box}), "
              f"mean |grey difference| {grey.mean():.2f}, 99th percentile {np.percentile(grey, 99):.1f}")


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
    # The smoke test keeps the code paths (1/4 decodes) on frames quick to encode, for a smaller network.
    size = 128 if args.smoke_test else args.size
    decode_case(size, seconds, *((1600, 1200) if args.smoke_test else (4000, 3000)))
    decode_case(size, seconds, *((2000, 1400) if args.smoke_test else (3216, 2136)), fmt="PNG", field=1.12,
                bens=(False,))


if __name__ == "__main__":
    main()
