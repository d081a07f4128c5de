"""`ingest`: every kind of bad input lands in ingest_errors.parquet with its reason, every good row is kept."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import dataset_fixtures as fx
from drray.data.sources import get_source
from drray.data.ingest import NoUsableImages, ingest, parse_label, read_errors, read_manifest
from drray.schema import ERRORS_SCHEMA, MANIFEST_SCHEMA, SOURCES

COLUMNS = ["image_id", "path", "label", "mask_ma"]
GOOD = [["good0", "img/good0.png", "0", ""], ["good1", "img/good1.jpg", "3", ""], ["good2", "img/good2.png", "4", ""]]


def tree(root: Path, extra: list[list[str]]) -> Path:
    """Three good images plus `extra` rows in a labels.csv (columns COLUMNS)."""
    for i, (_, rel, _, _) in enumerate(GOOD):
        fx.write_image(root / rel, seed=i)
    fx.write_csv(root / "labels.csv", COLUMNS, GOOD + extra)
    return root


def run(root: Path, out: Path, **kwargs):
    result = ingest("csv", root, out, id_column="image_id", **kwargs)
    assert pq.read_schema(result.manifest_path).equals(MANIFEST_SCHEMA)
    assert pq.read_schema(result.errors_path).equals(ERRORS_SCHEMA)
    return result, read_manifest(result.manifest_path).set_index("image_id", drop=False), read_errors(result.errors_path)


def assert_good_rows_kept(df: pd.DataFrame) -> None:
    for image_id, _, label, _ in GOOD:
        assert df.loc[image_id, "label"] == int(label)
        assert df.loc[image_id, "width"] == fx.SIZE


# Each case: a bad file (or none) and its labels.csv row -> (reason, stage). Row 5 of labels.csv.
def _missing(root):
    return ["bad", "img/none.png", "1", ""]


def _file(writer, name):
    def make(root):
        writer(root / "img" / name)
        return ["bad", f"img/{name}", "1", ""]
    return make


def _label(text):
    def make(root):
        fx.write_image(root / "img" / "bad.png")
        return ["bad", "img/bad.png", text, ""]
    return make


def _outside_relative(root):
    fx.write_image(root.parent / "outside.png")
    return ["bad", "../outside.png", "1", ""]


def _outside_absolute(root):
    return ["bad", str(fx.write_image(root.parent / "outside.png")), "1", ""]


def _outside_symlink(root):
    (root / "img").mkdir(parents=True, exist_ok=True)
    os.symlink(fx.write_image(root.parent / "outside.png"), root / "img" / "link.png")
    return ["bad", "img/link.png", "1", ""]


def _duplicate(root):
    fx.write_image(root / "img" / "again.png")
    return ["good1", "img/again.png", "2", ""]


BAD_IMAGES = {
    "missing": (_missing, "missing_file", "read"),
    "zero_byte": (_file(fx.write_empty, "empty.png"), "empty_file", "decode"),
    "truncated": (_file(fx.write_truncated, "cut.png"), "truncated_image", "decode"),
    "truncated_jpeg": (_file(fx.write_truncated_jpeg, "cut.jpg"), "truncated_image", "decode"),
    "corrupt": (_file(fx.write_corrupt, "bad.tif"), "corrupt_image", "decode"),
    "not_an_image": (_file(fx.write_not_image, "text.jpg"), "not_an_image", "decode"),
    # 30000x30000: PIL's own bomb check used to fire first and call it corrupt_image.
    "above_pils_limit": (_file(fx.write_huge_png, "huge.png"), "image_too_large", "decode"),
}
BAD_RECORDS = {
    "label_missing": (_label(""), "label_missing"),
    "label_not_integer": (_label("two"), "label_not_integer"),
    "label_fractional": (_label("2.5"), "label_not_integer"),
    "label_above": (_label("7"), "label_out_of_range"),
    "label_negative": (_label("-1"), "label_out_of_range"),
    "duplicate_id": (_duplicate, "duplicate_id"),
}
OUTSIDE = {"relative": _outside_relative, "absolute": _outside_absolute, "symlink": _outside_symlink}


@pytest.mark.parametrize("case", list(BAD_IMAGES))
def test_bad_image_files(tmp_path, case):
    make, reason, stage = BAD_IMAGES[case]
    root = tmp_path / "data"
    root.mkdir()
    row = make(root)
    result, df, errors = run(tree(root, [row]), tmp_path / "out")
    assert_good_rows_kept(df)
    assert "bad" not in df.index and len(df) == len(GOOD)
    assert errors[["reason", "stage"]].values.tolist() == [[reason, stage]]
    assert errors["source"][0] == str(root / row[1]) and errors["detail"][0]
    assert result.errors_by_reason == {reason: 1}


@pytest.mark.parametrize("case", list(BAD_RECORDS))
def test_bad_labels_and_ids(tmp_path, case):
    make, reason = BAD_RECORDS[case]
    root = tmp_path / "data"
    root.mkdir()
    result, df, errors = run(tree(root, [make(root)]), tmp_path / "out")
    assert_good_rows_kept(df)  # for duplicate_id: the first good1 (grade 3), not the later one
    assert len(df) == len(GOOD)
    assert errors[["source", "stage", "reason"]].values.tolist() == [[f"{root / 'labels.csv'}:5", "ingest", reason]]


@pytest.mark.parametrize("case", list(OUTSIDE))
def test_paths_outside_the_root(tmp_path, case):
    root = tmp_path / "data"
    root.mkdir()
    row = OUTSIDE[case](root)
    _, df, errors = run(tree(root, [row]), tmp_path / "out")
    assert_good_rows_kept(df)
    assert len(df) == len(GOOD)
    assert errors[["source", "stage", "reason"]].values.tolist() == [[row[1], "ingest", "path_outside_root"]]
    assert str(root.resolve()) in errors["detail"][0]


@pytest.mark.parametrize("mode", ["L", "RGBA", "I;16", "P"])
def test_unusual_pixel_formats_are_kept(tmp_path, mode):
    root = tmp_path / "data"
    fx.write_image(root / "img" / "odd.png", size=40, mode=mode)
    _, df, errors = run(tree(root, [["odd", "img/odd.png", "2", ""]]), tmp_path / "out")
    assert errors.empty
    assert (df.loc["odd", "width"], df.loc["odd", "height"], df.loc["odd", "label"]) == (40, 40, 2)


def test_decompression_bomb_is_refused(tmp_path):
    root = tmp_path / "data"
    fx.write_image(root / "img" / "huge.png", size=96)
    _, df, errors = run(tree(root, [["huge", "img/huge.png", "1", ""]]), tmp_path / "out", max_pixels=64 * 64)
    assert_good_rows_kept(df)
    assert "huge" not in df.index
    assert errors[["reason", "stage"]].values.tolist() == [["image_too_large", "decode"]]


@pytest.mark.parametrize("case, reason, stage", [
    ("missing", "mask_missing", "read"), ("unreadable", "mask_unreadable", "decode"),
    ("outside", "path_outside_root", "ingest"),
])
def test_bad_mask_keeps_the_image(tmp_path, case, reason, stage):
    root = tmp_path / "data"
    fx.write_image(root / "img" / "m.png")
    if case == "unreadable":
        fx.write_not_image(root / "masks" / "m_ma.png")
    mask = "../m_ma.png" if case == "outside" else "masks/m_ma.png"
    fx.write_mask(root / "masks" / "ok_ma.png")
    _, df, errors = run(tree(root, [["m", "img/m.png", "2", mask], ["ok", "img/m.png", "1", "masks/ok_ma.png"]]),
                        tmp_path / "out")
    assert df.loc["m", "label"] == 2 and pd.isna(df.loc["m", "mask_ma"])
    assert df.loc["ok", "mask_ma"].endswith("masks/ok_ma.png")
    assert errors[["reason", "stage"]].values.tolist() == [[reason, stage]]


def test_integral_float_grades_are_accepted():
    assert parse_label("2.0", True, "f:2", "x") == 2 and parse_label(" 4 ", True, "f:2", "x") == 4
    assert parse_label("", False, "f:2", "x") is None and parse_label(None, False, "f:2", "x") is None


def test_summary_counts(tmp_path):
    root = tmp_path / "data"
    result, df, _ = run(tree(root, [_label("9")(root)]), tmp_path / "out")
    assert result.n_rows == 3 and sum(result.n_by_split.values()) == 3
    assert result.n_by_label == {"0": 1, "3": 1, "4": 1}
    text = result.summary()
    assert "3 rows kept, 1 errors" in text and "label_out_of_range" in text and str(result.manifest_path) in text
    for split, n in result.n_by_split.items():
        assert sum(result.n_by_split_label[split].values()) == n == (df["split"] == split).sum()


@pytest.mark.parametrize("source", SOURCES)
def test_empty_root_raises_no_usable_images(tmp_path, source):
    (tmp_path / "empty").mkdir()
    with pytest.raises(NoUsableImages) as e:
        ingest(source, tmp_path / "empty", tmp_path / "out")
    assert str(tmp_path / "empty") in str(e.value) and get_source(source).looked_for in str(e.value)


def test_all_refused_raises_after_writing_errors(tmp_path):
    root = tmp_path / "data"
    fx.write_not_image(root / "a.png")
    fx.write_csv(root / "labels.csv", ["path", "label"], [["a.png", 1], ["b.png", 2]])
    with pytest.raises(NoUsableImages, match=r"all 2 records were refused .*missing_file 1, not_an_image 1"):
        ingest("csv", root, tmp_path / "out")
    assert sorted(read_errors(tmp_path / "out" / "ingest_errors.parquet")["reason"]) == ["missing_file", "not_an_image"]


def test_missing_root(tmp_path):
    with pytest.raises(NoUsableImages, match="is not a directory"):
        ingest("aptos2019", tmp_path / "nowhere", tmp_path / "out")


def test_read_manifest_refuses_other_files(tmp_path):
    root = tmp_path / "data"
    result, _, _ = run(tree(root, []), tmp_path / "out")
    assert isinstance(read_manifest(result.manifest_path)["label"].dtype, pd.Int8Dtype)
    with pytest.raises(ValueError, match="is not a drray manifest: missing column"):
        read_manifest(result.errors_path)
    pq.write_table(pa.table({"image_id": ["a"], "label": ["x"]}), tmp_path / "odd.parquet")
    with pytest.raises(ValueError, match="label is string, expected int8"):
        read_manifest(tmp_path / "odd.parquet")
    (tmp_path / "text.parquet").write_text("not parquet")
    with pytest.raises(ValueError, match="cannot be read as Parquet"):
        read_manifest(tmp_path / "text.parquet")
    with pytest.raises(FileNotFoundError, match="drray ingest"):
        read_errors(tmp_path / "none.parquet")


def test_parallel_choice_follows_the_image_count(tmp_path, monkeypatch):
    import drray.data.probe as probe

    calls = []
    monkeypatch.setattr(probe, "_in_ray", lambda items, max_pixels: calls.append(len(items)) or probe.probe_chunk(items, max_pixels))
    monkeypatch.setattr(probe, "PARALLEL_ABOVE", 2)
    run(tree(tmp_path / "data", []), tmp_path / "out")
    run(tree(tmp_path / "data", []), tmp_path / "out2", parallel=False)
    assert calls == [3]


@pytest.mark.timeout(120)
def test_parallel_ray_path_matches_in_process(tmp_path, ray_session):
    root = tmp_path / "data"
    root.mkdir()
    extra = [BAD_IMAGES[k][0](root) for k in ("missing", "truncated", "not_an_image")]
    extra = [[f"bad{i}", *row[1:]] for i, row in enumerate(extra)]
    for i in range(70):  # more than one chunk of 64
        fx.write_image(root / "many" / f"m{i}.png", seed=i)
        extra.append([f"m{i}", f"many/m{i}.png", str(i % 5), ""])
    tree(root, extra)
    serial = ingest("csv", root, tmp_path / "serial", id_column="image_id", parallel=False)
    ray_out = ingest("csv", root, tmp_path / "ray", id_column="image_id", parallel=True)
    assert pq.read_table(ray_out.manifest_path).equals(pq.read_table(serial.manifest_path))
    assert pq.read_table(ray_out.errors_path).equals(pq.read_table(serial.errors_path))
    assert serial.n_rows == 73 and serial.errors_by_reason == {"missing_file": 1, "truncated_image": 1, "not_an_image": 1}
