"""Tiny dataset trees in each supported layout, and bad files of every kind, built on the fly.

Photographs are SIZE-pixel "fundus" discs on black; nothing is downloaded. Each builder returns
what a correct manifest must hold, so tests compare against the layout they built.
"""

from __future__ import annotations

import csv
import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 48


def fundus(size: int = SIZE, seed: int = 0) -> np.ndarray:
    """A bright disc on black, (size, size, 3) uint8, with a little seeded texture."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    disc = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size * 0.45) ** 2
    img = np.zeros((size, size, 3), np.uint8)
    img[disc] = (200, 90, 40)
    img[disc] += rng.integers(0, 30, size=(int(disc.sum()), 3), dtype=np.uint8)
    return img


def write_image(path: Path, size: int = SIZE, seed: int = 0, mode: str = "RGB") -> Path:
    """A fundus photograph in `mode` (RGB, L, RGBA, P, I;16), format from the suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = fundus(size, seed)
    if mode == "I;16":
        img = Image.fromarray(rgb[..., 0].astype(np.uint16) * 257)
    elif mode == "RGBA":
        img = Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)]))
    else:
        img = Image.fromarray(rgb).convert(mode)
    img.save(path)
    return path


def write_mask(path: Path, size: int = SIZE) -> Path:
    """A lesion mask: a small white square on black (mode L; .tif or .png from the suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    m = np.zeros((size, size), np.uint8)
    m[size // 3: size // 2, size // 3: size // 2] = 255
    Image.fromarray(m).save(path)
    return path


# ----------------------------------------------------------------------------------- bad files
def write_empty(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def write_truncated(path: Path) -> Path:
    """A PNG cut in half."""
    buf = io.BytesIO()
    Image.fromarray(fundus()).save(buf, "PNG")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    return path


def write_truncated_jpeg(path: Path) -> Path:
    """A noisy 400x300 JPEG cut at 60%: ingest's probe decodes JPEGs at 1/8 and must still notice."""
    data = encode(np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data[: len(data) * 6 // 10])
    return path


def write_corrupt(path: Path) -> Path:
    """A deflate TIFF whose header is intact and whose compressed strip is zeros."""
    buf = io.BytesIO()
    Image.fromarray(fundus()).save(buf, "TIFF", compression="tiff_deflate")
    data = bytearray(buf.getvalue())
    (first_ifd,) = struct.unpack("<I", data[4:8])
    # The strip sits between the 8-byte header and the directory: wipe it.
    data[8:first_ifd] = bytes(first_ifd - 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(data))
    return path


def write_huge_png(path: Path, width: int = 30_000, height: int = 30_000) -> Path:
    """A valid all-black 1-bit PNG of width x height, written row by row in a few hundred KB.

    Nothing of its size is ever held in memory: the zlib stream is fed one row at a time.
    """
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    row = bytes(1 + (width + 7) // 8)  # filter byte 0, then 8 pixels a byte, all 0
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n"
                     + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def write_not_image(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("this is a text file with an image suffix\n")
    return path


# ------------------------------------------------------------------------------------ layouts
def write_csv(path: Path, header: list[str], rows: list[list], delimiter: str = ",") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh, delimiter=delimiter)
        w.writerow(header)
        w.writerows(rows)
    return path


def make_aptos(root: Path) -> dict:
    """4 graded train images, 2 ungraded test images."""
    train = {f"a{i:03d}": i % 5 for i in range(4)}
    test = ["t000", "t001"]
    write_csv(root / "train.csv", ["id_code", "diagnosis"], [[k, v] for k, v in train.items()])
    write_csv(root / "test.csv", ["id_code"], [[k] for k in test])
    for i, k in enumerate(train):
        write_image(root / "train_images" / f"{k}.png", seed=i)
    for i, k in enumerate(test):
        write_image(root / "test_images" / f"{k}.png", size=SIZE + 8, seed=10 + i)
    return {"train": train, "test": test}


def make_eyepacs(root: Path, with_test: bool = True) -> dict:
    """3 train patients x 2 eyes, 1 test patient x 2 eyes (Public + Private)."""
    train = {f"{p}_{eye}": (p + (eye == "right")) % 5 for p in (10, 13, 15) for eye in ("left", "right")}
    test = {"1_left": 0, "1_right": 2}
    write_csv(root / "trainLabels.csv", ["image", "level"], [[k, v] for k, v in train.items()])
    for i, k in enumerate(train):
        write_image(root / "train" / f"{k}.jpeg", seed=i)
    if with_test:
        write_csv(root / "retinopathy_solution.csv", ["image", "level", "Usage"],
                  [["1_left", 0, "Public"], ["1_right", 2, "Private"]])
        for i, k in enumerate(test):
            write_image(root / "test" / f"{k}.jpeg", seed=20 + i)
    return {"train": train, "test": test if with_test else {}}


def make_messidor(root: Path, image_dir: str = "IMAGES", pairs: bool = True) -> dict:
    """4 images (two exam pairs) in `image_dir` with mixed suffixes; one ungradable."""
    names = ["20051020_43808_0100_PP.png", "20051020_43832_0100_PP.png", "IM000001.JPG", "IM000002.tif"]
    grades = {"20051020_43808_0100_PP": "1", "20051020_43832_0100_PP": "2", "IM000001": "0", "IM000002": ""}
    gradable = {"IM000002": "0"}
    rows = [[n, grades[Path(n).stem], "0", gradable.get(Path(n).stem, "1")] for n in names]
    write_csv(root / "messidor_data.csv", ["image_id", "adjudicated_dr_grade", "adjudicated_dme", "adjudicated_gradable"], rows)
    for i, n in enumerate(names):
        write_image(root / image_dir / n, seed=i)
    if pairs:
        write_csv(root / "messidor-2.csv", ["left", "right"], [[names[0], names[1]], [names[2], names[3]]], delimiter=";")
    return {"grades": grades, "names": names}


IDRID_B = "B. Disease Grading"
IDRID_A = "A. Segmentation"
IDRID_LESIONS = (("1. Microaneurysms", "MA"), ("2. Haemorrhages", "HE"), ("3. Hard Exudates", "EX"),
                 ("4. Soft Exudates", "SE"), ("5. Optic Disc", "OD"))


def make_idrid(root: Path) -> dict:
    """3 graded train + 2 graded test images; 2 segmentation images (one without SE).

    As in the release, the testing set numbers its images from IDRiD_001 again.
    """
    header = ["Image name", "Retinopathy grade", "Risk of macular edema ", "", ""]
    train = {"IDRiD_001": 3, "IDRiD_002": 0, "IDRiD_003": 4}
    test = {"IDRiD_001": 1, "IDRiD_002": 2}
    gt = root / IDRID_B / "2. Groundtruths"
    write_csv(gt / "a. IDRiD_Disease Grading_Training Labels.csv", header, [[k, v, 0, "", ""] for k, v in train.items()])
    write_csv(gt / "b. IDRiD_Disease Grading_Testing Labels.csv", header, [[k, v, 1, "", ""] for k, v in test.items()])
    for i, k in enumerate(train):
        write_image(root / IDRID_B / "1. Original Images" / "a. Training Set" / f"{k}.jpg", seed=i)
    for i, k in enumerate(test):
        write_image(root / IDRID_B / "1. Original Images" / "b. Testing Set" / f"{k}.jpg", seed=5 + i)
    seg = {"IDRiD_01": ("a. Training Set", ["MA", "HE", "EX", "SE", "OD"]), "IDRiD_55": ("b. Testing Set", ["MA", "HE", "EX", "OD"])}
    for i, (k, (set_dir, codes)) in enumerate(seg.items()):
        write_image(root / IDRID_A / "1. Original Images" / set_dir / f"{k}.jpg", seed=30 + i)
        for folder, code in IDRID_LESIONS:
            if code in codes:
                write_mask(root / IDRID_A / "2. All Segmentation Groundtruths" / set_dir / folder / f"{k}_{code}.tif")
    return {"train": train, "test": test, "seg": seg}


def make_ddr(root: Path) -> dict:
    """Graded images in train/valid/test (one ungradable), masks for one graded image and one seg-only image."""
    parts = {"train": {"007-1234-100.jpg": 2, "007-1235-100.jpg": 0, "007-1236-100.jpg": 5},
             "valid": {"008-0001-100.jpg": 1}, "test": {"009-0001-100.jpg": 4}}
    for folder, items in parts.items():
        (root / "DR_grading").mkdir(parents=True, exist_ok=True)
        (root / "DR_grading" / f"{folder}.txt").write_text("".join(f"{n} {g}\n" for n, g in items.items()))
        for i, n in enumerate(items):
            write_image(root / "DR_grading" / folder / n, seed=i)
    seg = root / "lesion_segmentation"
    write_image(seg / "train" / "image" / "007-1234-100.jpg", seed=0)
    for code in ("EX", "HE", "MA"):
        write_mask(seg / "train" / "label" / code / "007-1234-100.tif")
    write_image(seg / "test" / "image" / "010-0001-100.jpg", seed=9)
    write_mask(seg / "test" / "label" / "SE" / "010-0001-100.tif")
    return {"parts": parts}


def make_folder(root: Path) -> dict:
    """Two images in each grade folder, one nested; plus a non-grade folder and a root file."""
    expected = {}
    for g in range(5):
        for j in range(2):
            name = f"g{g}_{j}"
            sub = root / str(g) / ("nested" if j else "")
            write_image(sub / f"{name}.png", seed=g * 2 + j)
            expected[name] = g
    write_image(root / "extra" / "x.png")
    write_image(root / "loose.png")
    return expected


def make_synth(root: Path, n: int = 6) -> dict:
    """The layout `drray synth` writes: labels.csv + images/ + masks/ (pairs of eyes per patient)."""
    cols = ["image_id", "path", "label", "patient_id", "eye", "mask_ma", "mask_he", "mask_ex", "mask_se", "mask_nv", "mask_od"]
    rows, expected = [], {}
    for i in range(n):
        image_id = f"synth_{i:05d}"
        write_image(root / "images" / f"{image_id}.png", seed=i)
        ma = f"masks/{image_id}_ma.png" if i % 2 == 0 else ""
        if ma:
            write_mask(root / ma)
        od = f"masks/{image_id}_od.png"
        write_mask(root / od)
        rows.append([image_id, f"images/{image_id}.png", i % 5, f"p{i // 2:05d}", ("left", "right")[i % 2],
                     ma, "", "", "", "", od])
        expected[image_id] = {"label": i % 5, "patient_id": f"p{i // 2:05d}", "eye": ("left", "right")[i % 2],
                              "mask_ma": ma or None, "mask_od": od}
    write_csv(root / "labels.csv", cols, rows)
    return expected


def make_csv(root: Path, n: int = 5) -> dict:
    """A user's labels.csv with nested image folders and a patient column."""
    rows, expected = [], {}
    for i in range(n):
        rel = f"site{i % 2}/img{i}.jpg"
        write_image(root / rel, seed=i)
        rows.append([rel, i % 5, f"pt{i // 2}"])
        expected[f"site{i % 2}/img{i}"] = {"label": i % 5, "patient_id": f"pt{i // 2}"}
    write_csv(root / "labels.csv", ["path", "label", "patient"], rows)
    return expected


# ---------------------------------------------------------------------- large photographs
def large_fundus(width: int = 3888, height: int = 2592, disc: int | None = None, seed: int = 0) -> np.ndarray:
    """A camera-sized photograph: scikit-image's retina enlarged to a `disc`-px field (default: the
    height) centred on a black frame, with a little sensor noise. (height, width, 3) uint8."""
    import cv2
    import skimage.data

    d = disc or height
    field = cv2.resize(skimage.data.retina(), (d, d), interpolation=cv2.INTER_CUBIC)
    canvas = np.zeros((max(height, d), max(width, d), 3), np.uint8)
    y0, x0 = (canvas.shape[0] - d) // 2, (canvas.shape[1] - d) // 2
    canvas[y0:y0 + d, x0:x0 + d] = field
    y0, x0 = (canvas.shape[0] - height) // 2, (canvas.shape[1] - width) // 2
    img = canvas[y0:y0 + height, x0:x0 + width].astype(np.int16)
    img += np.random.default_rng(seed).integers(-2, 3, img.shape, dtype=np.int16)
    return np.clip(img, 0, 255).astype(np.uint8)


def encode(img: np.ndarray, fmt: str = "JPEG", **kwargs) -> bytes:
    """An (H, W, 3) or (H, W) uint8 array as encoded bytes (JPEG quality 92 unless given)."""
    if fmt == "JPEG":
        kwargs.setdefault("quality", 92)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, fmt, **kwargs)
    return buf.getvalue()
