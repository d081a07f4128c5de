"""Each dataset adapter, end to end through `ingest`, on a tiny tree in its own layout."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

import dataset_fixtures as fx
from drray.data.sources import get_source, list_sources
from drray.data.sources.eyepacs import parse_name
from drray.data.ingest import ingest, read_errors, read_manifest
from drray.schema import MANIFEST_SCHEMA, MASK_COLUMNS, SOURCES


def run(source: str, root: Path, out: Path, **kwargs):
    result = ingest(source, root, out, **kwargs)
    assert pq.read_schema(result.manifest_path).equals(MANIFEST_SCHEMA)
    df = read_manifest(result.manifest_path).set_index("image_id", drop=False)
    return result, df, read_errors(result.errors_path)


def masks_of(row) -> dict[str, str]:
    return {c: row[c] for c in MASK_COLUMNS if isinstance(row[c], str)}


def test_registry_covers_every_source():
    assert list_sources() == sorted(SOURCES)
    with pytest.raises(ValueError, match="unknown dataset source 'kaggle'.*aptos2019"):
        get_source("kaggle")


def test_aptos(tmp_path):
    exp = fx.make_aptos(tmp_path / "aptos")
    _, df, errors = run("aptos2019", tmp_path / "aptos", tmp_path / "out")
    assert errors.empty
    assert list(df.index) == [*exp["train"], *exp["test"]]
    for k, grade in exp["train"].items():
        assert df.loc[k, "label"] == grade
        assert df.loc[k, "path"].endswith(f"train_images/{k}.png")
    test = df.loc[exp["test"]]
    assert test["label"].isna().all() and (test["split"] == "test").all()
    assert (test["width"] == fx.SIZE + 8).all() and (df.loc[list(exp["train"]), "height"] == fx.SIZE).all()
    assert (df["patient_id"] == df["image_id"]).all() and df["eye"].isna().all()
    assert (df["dataset"] == "aptos2019").all()


def test_aptos_missing_train_image_is_an_error_row(tmp_path):
    exp = fx.make_aptos(tmp_path / "aptos")
    (tmp_path / "aptos" / "train_images" / "a001.png").unlink()
    _, df, errors = run("aptos2019", tmp_path / "aptos", tmp_path / "out")
    assert "a001" not in df.index and len(df) == len(exp["train"]) + len(exp["test"]) - 1
    assert errors[["reason", "stage"]].values.tolist() == [["missing_file", "read"]]
    assert errors["source"][0].endswith("train_images/a001.png")


def test_eyepacs_name_parsing():
    assert parse_name("10_left") == ("10", "left")
    assert parse_name("44_RIGHT") == ("44", "right")
    assert parse_name("scan7") == ("scan7", None)


def test_eyepacs(tmp_path):
    exp = fx.make_eyepacs(tmp_path / "eye")
    _, df, errors = run("eyepacs2015", tmp_path / "eye", tmp_path / "out")
    assert errors.empty
    assert set(df.index) == set(exp["train"]) | set(exp["test"])
    assert df.loc["13_right", "patient_id"] == "13" and df.loc["13_right", "eye"] == "right"
    assert df.loc["10_left", "label"] == exp["train"]["10_left"]
    assert set(df.loc[list(exp["train"]), "split"]) <= {"train", "val"}
    assert (df.loc[list(exp["test"]), "split"] == "test").all()
    assert (df.groupby("patient_id")["split"].nunique() == 1).all()


def test_eyepacs_without_solution_skips_test(tmp_path):
    exp = fx.make_eyepacs(tmp_path / "eye", with_test=False)
    fx.write_image(tmp_path / "eye" / "test" / "5_left.jpeg")
    _, df, _ = run("eyepacs2015", tmp_path / "eye", tmp_path / "out")
    assert set(df.index) == set(exp["train"])


@pytest.mark.parametrize("image_dir", ["IMAGES", "messidor-2/preprocess"])
def test_messidor(tmp_path, image_dir):
    exp = fx.make_messidor(tmp_path / "m", image_dir=image_dir)
    _, df, errors = run("messidor2", tmp_path / "m", tmp_path / "out")
    assert errors.empty  # the ungradable image is fine: kept, label null, no error
    assert set(df.index) == set(exp["grades"])
    assert df.loc["20051020_43832_0100_PP", "label"] == 2 and df.loc["IM000001", "label"] == 0
    assert pd.isna(df.loc["IM000002", "label"])
    assert df.loc["IM000001", "path"].endswith(f"{image_dir}/IM000001.JPG")
    # Pairs from messidor-2.csv: one patient per examination, eyes from the columns.
    assert df.loc["20051020_43832_0100_PP", "patient_id"] == "20051020_43808_0100_PP"
    assert df.loc["IM000002", "eye"] == "right" and df.loc["IM000001", "eye"] == "left"
    assert (df.groupby("patient_id")["split"].nunique() == 1).all()


def test_messidor_without_pairs_and_kaggle_column_names(tmp_path):
    root = tmp_path / "m"
    exp = fx.make_messidor(root, pairs=False)
    text = (root / "messidor_data.csv").read_text().replace("image_id", "id_code").replace("adjudicated_dr_grade", "diagnosis")
    (root / "messidor_data.csv").write_text(text)
    _, df, _ = run("messidor2", root, tmp_path / "out")
    assert set(df.index) == set(exp["grades"])
    assert (df["patient_id"] == df["image_id"]).all() and df["eye"].isna().all()


def test_messidor_gradable_without_grade_is_label_missing(tmp_path):
    root = tmp_path / "m"
    fx.make_messidor(root)
    text = (root / "messidor_data.csv").read_text().replace("IM000001.JPG,0,0,1", "IM000001.JPG,,0,1")
    (root / "messidor_data.csv").write_text(text)
    _, df, errors = run("messidor2", root, tmp_path / "out")
    assert "IM000001" not in df.index
    assert errors[["source", "reason"]].values.tolist() == [[f"{root / 'messidor_data.csv'}:4", "label_missing"]]


def test_idrid(tmp_path):
    exp = fx.make_idrid(tmp_path / "idrid")
    _, df, errors = run("idrid", tmp_path / "idrid", tmp_path / "out")
    assert errors.empty
    graded = {**{f"train/{k}": v for k, v in exp["train"].items()}, **{f"test/{k}": v for k, v in exp["test"].items()}}
    seg = {"train/IDRiD_01", "test/IDRiD_55"}
    assert set(df.index) == set(graded) | seg
    for k, grade in graded.items():
        assert df.loc[k, "label"] == grade and not masks_of(df.loc[k])
    assert df.loc["test/IDRiD_001", "path"].endswith("b. Testing Set/IDRiD_001.jpg")
    assert set(df.loc[[k for k in graded if k.startswith("train/")], "split"]) <= {"train", "val"}
    assert (df.loc[[k for k in graded if k.startswith("test/")], "split"] == "test").all()
    # Segmentation images: their own rows, no grade, masks matched by id (absent lesion = no mask).
    seg1, seg2 = df.loc["train/IDRiD_01"], df.loc["test/IDRiD_55"]
    assert pd.isna(seg1["label"]) and seg1["split"] in ("train", "val") and seg2["split"] == "test"
    assert set(masks_of(seg1)) == {"mask_ma", "mask_he", "mask_ex", "mask_se", "mask_od"}
    assert set(masks_of(seg2)) == {"mask_ma", "mask_he", "mask_ex", "mask_od"}
    assert seg1["mask_se"].endswith("a. Training Set/4. Soft Exudates/IDRiD_01_SE.tif")


def test_idrid_nested_release_and_masks_on_a_graded_twin(tmp_path):
    root = tmp_path / "idrid"
    fx.make_idrid(root)
    # Nested release folder names, and a segmentation image named like a graded one of its set.
    shutil.move(root / fx.IDRID_B, tmp_path / "b")
    (root / fx.IDRID_B).mkdir()
    shutil.move(tmp_path / "b", root / fx.IDRID_B / fx.IDRID_B)
    seg = root / fx.IDRID_A / "1. Original Images" / "a. Training Set"
    fx.write_image(seg / "IDRiD_002.jpg")
    fx.write_mask(root / fx.IDRID_A / "2. All Segmentation Groundtruths" / "a. Training Set" / "5. Optic Disc" / "IDRiD_002_OD.tif")
    _, df, errors = run("idrid", root, tmp_path / "out")
    assert errors.empty
    assert df.loc["train/IDRiD_002", "label"] == 0
    assert masks_of(df.loc["train/IDRiD_002"]).keys() == {"mask_od"}
    assert not masks_of(df.loc["test/IDRiD_002"])
    assert (df["image_id"] == "train/IDRiD_002").sum() == 1 and len(df) == 7


def test_ddr(tmp_path):
    exp = fx.make_ddr(tmp_path / "ddr")
    _, df, errors = run("ddr", tmp_path / "ddr", tmp_path / "out")
    assert errors.empty
    assert df.loc["008-0001-100", "split"] == "val" and df.loc["009-0001-100", "split"] == "test"
    assert df.loc["007-1234-100", "label"] == 2
    assert pd.isna(df.loc["007-1236-100", "label"])  # grade 5: ungradable, kept
    assert masks_of(df.loc["007-1234-100"]).keys() == {"mask_ex", "mask_he", "mask_ma"}
    seg_only = df.loc["010-0001-100"]
    assert seg_only["split"] == "test" and masks_of(seg_only).keys() == {"mask_se"}
    assert len(df) == sum(len(v) for v in exp["parts"].values()) + 1


def test_ddr_line_without_grade(tmp_path):
    root = tmp_path / "ddr"
    fx.make_ddr(root)
    with (root / "DR_grading" / "test.txt").open("a") as fh:
        fh.write("\n009-0002-100.jpg\n")
    fx.write_image(root / "DR_grading" / "test" / "009-0002-100.jpg")
    _, df, errors = run("ddr", root, tmp_path / "out")
    assert "009-0002-100" not in df.index
    assert errors[["source", "stage", "reason"]].values.tolist() == [
        [f"{root / 'DR_grading' / 'test.txt'}:3", "ingest", "label_missing"]]


def test_folder(tmp_path, caplog):
    exp = fx.make_folder(tmp_path / "f")
    fx.write_image(tmp_path / "f" / "3" / "g0_0.png")  # same name under another grade
    fx.write_not_image(tmp_path / "f" / "2" / "notes.png")
    (tmp_path / "f" / "2" / ".hidden.png").write_text("hidden files are not candidates")
    _, df, errors = run("folder", tmp_path / "f", tmp_path / "out")
    assert {k: int(df.loc[k, "label"]) for k in df.index} == exp
    assert sorted(errors["reason"]) == ["duplicate_id", "not_an_image"]
    assert "not grade folders" in caplog.text and "extra" in caplog.text and "loose.png" in caplog.text


def test_synth(tmp_path):
    exp = fx.make_synth(tmp_path / "s", n=8)
    _, df, errors = run("synth", tmp_path / "s", tmp_path / "out")
    assert errors.empty and (df["dataset"] == "synth").all()
    for k, e in exp.items():
        row = df.loc[k]
        assert (row["label"], row["patient_id"], row["eye"]) == (e["label"], e["patient_id"], e["eye"])
        assert row["mask_od"].endswith(e["mask_od"])
        assert pd.isna(row["mask_ma"]) == (e["mask_ma"] is None)
    assert (df.groupby("patient_id")["split"].nunique() == 1).all()


def test_synth_inside_the_run_dir_gets_relative_paths(tmp_path):
    fx.make_synth(tmp_path / "run" / "synth")
    _, df, _ = run("synth", tmp_path / "run" / "synth", tmp_path / "run")
    assert df["path"].str.startswith("synth/images/").all()
    assert df["mask_od"].str.startswith("synth/masks/").all()
    assert all((tmp_path / "run" / p).is_file() for p in df["path"])


def test_csv(tmp_path):
    exp = fx.make_csv(tmp_path / "c")
    _, df, errors = run("csv", tmp_path / "c", tmp_path / "out", patient_column="patient")
    assert errors.empty and set(df.index) == set(exp)
    for k, e in exp.items():
        assert (df.loc[k, "label"], df.loc[k, "patient_id"]) == (e["label"], e["patient_id"])
    assert (df.groupby("patient_id")["split"].nunique() == 1).all()


def test_csv_custom_file_and_columns(tmp_path):
    root = tmp_path / "c"
    fx.write_image(root / "x.png")
    fx.write_image(root / "y.png", seed=1)
    table = fx.write_csv(tmp_path / "grades.csv", ["file", "grade", "uid", "eye"],
                         [[str(root / "x.png"), 3, "X", "OS"], ["y.png", 1, "Y", "R"]])
    _, df, errors = run("csv", root, tmp_path / "out", csv_path=table, path_column="file",
                        label_column="grade", id_column="uid")
    assert errors.empty
    assert df["label"].tolist() == [3, 1] and df["eye"].tolist() == ["left", "right"]
    assert df["image_id"].tolist() == ["X", "Y"]


def test_csv_missing_column_is_a_clear_error(tmp_path):
    fx.make_csv(tmp_path / "c")
    with pytest.raises(ValueError, match=r"labels.csv has no column\(s\) 'grade'; its columns are 'path', 'label'"):
        ingest("csv", tmp_path / "c", tmp_path / "out", label_column="grade")


# ------------------------------------------------------------ ids that are file names
# In these layouts an image id is a file name or stem joined to the image folder of its split. A
# name with path parts must become an errors row, never a file read from another folder or split.
# Each builder makes the tree, appends a row naming `name` (when given) and returns where that row
# is, with names of real files elsewhere in the tree: `other` relative to the image folder, `abs`
# relative to the root (both as the layout writes names), and `stem`, an image of the same folder.
def _bad_aptos(root: Path, name: str | None):
    fx.make_aptos(root)
    if name is not None:
        with (root / "train.csv").open("a") as fh:
            fh.write(f"{name},2\n")
    return root / "train.csv", 6, {"other": "../test_images/t000", "abs": "test_images/t000", "stem": "a000"}


def _bad_eyepacs(root: Path, name: str | None):
    fx.make_eyepacs(root)
    if name is not None:
        with (root / "trainLabels.csv").open("a") as fh:
            fh.write(f"{name},3\n")
    return root / "trainLabels.csv", 8, {"other": "../test/1_left", "abs": "test/1_left", "stem": "10_left"}


def _bad_messidor(root: Path, name: str | None):
    fx.make_messidor(root)
    fx.write_image(root / "elsewhere" / "IM000009.png")  # inside the root, outside IMAGES/
    if name is not None:
        with (root / "messidor_data.csv").open("a") as fh:
            fh.write(f"{name},1,0,1\n")
    return root / "messidor_data.csv", 6, {"other": "../elsewhere/IM000009.png", "abs": "elsewhere/IM000009.png",
                                           "stem": "IM000001.JPG"}


def _bad_idrid(root: Path, name: str | None):
    fx.make_idrid(root)
    # A testing-set photograph no testing label names: a training row must not pull it in.
    testing = f"{fx.IDRID_B}/1. Original Images/b. Testing Set"
    fx.write_image(root / testing / "IDRiD_009.jpg")
    table = root / fx.IDRID_B / "2. Groundtruths" / "a. IDRiD_Disease Grading_Training Labels.csv"
    if name is not None:
        with table.open("a") as fh:
            fh.write(f'"{name}",2,0,,\n')
    return table, 5, {"other": "../b. Testing Set/IDRiD_009", "abs": f"{testing}/IDRiD_009", "stem": "IDRiD_001"}


def _bad_ddr(root: Path, name: str | None):
    fx.make_ddr(root)
    if name is not None:
        with (root / "DR_grading" / "train.txt").open("a") as fh:
            fh.write(f"{name} 3\n")
    # Before names were checked, the test image came in as a train row and its own row was a duplicate.
    return root / "DR_grading" / "train.txt", 4, {"other": "../test/009-0001-100.jpg",
                                                  "abs": "DR_grading/test/009-0001-100.jpg", "stem": "007-1235-100.jpg"}


BAD_ID_LAYOUTS = {"aptos2019": _bad_aptos, "eyepacs2015": _bad_eyepacs, "messidor2": _bad_messidor,
                  "idrid": _bad_idrid, "ddr": _bad_ddr}
BAD_NAMES = {
    "parent": lambda n, root: n["other"],
    "backslashes": lambda n, root: n["other"].replace("/", "\\"),
    "subfolder": lambda n, root: f"sub/{n['stem']}",
    "absolute": lambda n, root: str(root / n["abs"]),
    "drive": lambda n, root: f"C:\\x\\{n['stem']}",
    "drive_relative": lambda n, root: f"C:{n['stem']}",
    "dotdot": lambda n, root: "..",
}
_COMPARED = ["image_id", "label", "split", "patient_id", "eye", "width", "height"]


@pytest.mark.parametrize("kind", list(BAD_NAMES))
@pytest.mark.parametrize("source", list(BAD_ID_LAYOUTS))
def test_id_with_path_parts_is_an_error_row(tmp_path, source, kind):
    build = BAD_ID_LAYOUTS[source]
    _, _, names = build(tmp_path / "clean", None)
    _, expected, _ = run(source, tmp_path / "clean", tmp_path / "out_clean")
    root = tmp_path / "data"
    name = BAD_NAMES[kind](names, root)
    table, line, _ = build(root, name)
    _, df, errors = run(source, root, tmp_path / "out")
    assert errors[["source", "stage", "reason"]].values.tolist() == [[f"{table}:{line}", "ingest", "bad_image_id"]]
    assert repr(name) in errors["detail"][0] and "Fix the name" in errors["detail"][0]
    # Not a manifest row, and every other row exactly as in the same tree without it.
    assert df[_COMPARED].reset_index(drop=True).equals(expected[_COMPARED].reset_index(drop=True))


def test_file_names_that_are_fine_are_not_refused():
    from drray.data.sources.base import not_a_file_name

    for ok in ("a000", "IM000001.JPG", "20051020_43808_0100_PP.png", "10_left", "007-1234-100.jpg", "x.y.z", "..a"):
        assert not_a_file_name(ok) is None, ok
