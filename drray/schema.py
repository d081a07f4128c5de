"""Column names, Arrow schemas of every drray table, and the ICDR grade constants.

Every module that reads or writes a table takes its names from here, so a column cannot be
spelled two ways. Tables may gain columns; the names below are a public contract.
"""

from __future__ import annotations

import pyarrow as pa

# ICDR (International Clinical Diabetic Retinopathy) severity scale.
NUM_GRADES = 5
GRADES = (0, 1, 2, 3, 4)
GRADE_NAMES = ("no DR", "mild NPDR", "moderate NPDR", "severe NPDR", "proliferative DR")
REFERABLE_MIN_GRADE = 2  # referable DR: moderate NPDR or worse
REFERABLE_THRESHOLD = 0.5
"""P(grade >= 2) at or above which an image is flagged referable (reports, serving, sensitivity/specificity)."""

SPLITS = ("train", "val", "test")
HEADS = ("classification", "ordinal")
"""Grading heads: softmax over 5 grades, or one ordinal score cut by fitted thresholds."""
EYES = ("left", "right")

# Lesion masks: microaneurysms, haemorrhages, hard exudates, soft exudates (cotton-wool
# spots), neovascularisation. The optic disc is anatomy, kept apart as a shortcut detector.
LESION_TYPES = ("ma", "he", "ex", "se", "nv")
OPTIC_DISC = "od"
MASK_TYPES = LESION_TYPES + (OPTIC_DISC,)
MASK_COLUMNS = tuple(f"mask_{t}" for t in MASK_TYPES)

SOURCES = ("aptos2019", "eyepacs2015", "messidor2", "idrid", "ddr", "csv", "folder", "synth")

# Stable reason codes of the errors table: users group and count by them, so never rename.
class Reason:
    MISSING_FILE = "missing_file"
    EMPTY_FILE = "empty_file"
    TRUNCATED_IMAGE = "truncated_image"
    CORRUPT_IMAGE = "corrupt_image"
    NOT_AN_IMAGE = "not_an_image"
    IMAGE_TOO_LARGE = "image_too_large"
    LABEL_MISSING = "label_missing"
    LABEL_NOT_INTEGER = "label_not_integer"
    LABEL_OUT_OF_RANGE = "label_out_of_range"
    DUPLICATE_ID = "duplicate_id"
    PATH_OUTSIDE_ROOT = "path_outside_root"
    BAD_IMAGE_ID = "bad_image_id"  # an id that must be a file name in one folder has path parts
    MASK_MISSING = "mask_missing"
    MASK_UNREADABLE = "mask_unreadable"
    NO_FUNDUS = "no_fundus"
    EXPLAIN_FAILED = "explain_failed"


STAGES = ("ingest", "read", "decode", "preprocess", "explain")

MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("dataset", pa.string(), nullable=False),
        pa.field("path", pa.string(), nullable=False),
        pa.field("label", pa.int8()),
        pa.field("patient_id", pa.string()),
        pa.field("eye", pa.string()),
        pa.field("split", pa.string()),
        *[pa.field(c, pa.string()) for c in MASK_COLUMNS],
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
    ]
)

ERRORS_SCHEMA = pa.schema(
    [
        pa.field("source", pa.string(), nullable=False),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("detail", pa.string()),
    ]
)

EXPLANATIONS_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("dataset", pa.string()),
        pa.field("split", pa.string()),
        pa.field("label", pa.int8()),
        pa.field("model_id", pa.string()),
        pa.field("pred", pa.int8()),
        pa.field("probs", pa.list_(pa.float32())),
        pa.field("referable_prob", pa.float32()),
        pa.field("cam_method", pa.string()),
        pa.field("target_class", pa.int8()),
        pa.field("cam", pa.binary()),  # float16, row-major, cam_h x cam_w
        pa.field("cam_h", pa.int16()),
        pa.field("cam_w", pa.int16()),
        pa.field("peak_y", pa.float32()),
        pa.field("peak_x", pa.float32()),
        pa.field("cam_entropy", pa.float32()),
        pa.field("pointing_hit", pa.bool_()),
        pa.field("energy_in_lesions", pa.float32()),
        *[pa.field(f"energy_{t}", pa.float32()) for t in LESION_TYPES],
        pa.field("od_energy", pa.float32()),
        pa.field("lesion_area", pa.float32()),  # lesion pixels / field-of-view pixels, null without masks
        pa.field("chance_hit", pa.float32()),  # share of the field within tolerance of a lesion: a random peak's score
        pa.field("ideal_energy", pa.float32()),  # energy_in_lesions of the lesion masks drawn on the target layer's grid
        pa.field("quality_ok", pa.bool_()),  # False: no fundus found, a centre crop was explained
        pa.field("cam_layer", pa.string()),  # the target layer the map was computed at
        pa.field("road_score", pa.float32()),  # ROAD faithfulness (cam.faithfulness), null when off
        pa.field("deletion_auc", pa.float32()),  # cam.faithfulness: score as the most relevant pixels go (lower: faithful)
        pa.field("insertion_auc", pa.float32()),  # cam.faithfulness: score as they come back (higher: faithful)
        pa.field("eye", pa.string()),  # left / right where the manifest knows it
        # Mask-free descriptors of the map as the engine made it (drray.scores.descriptors), for drray audit:
        pa.field("map_grid", pa.binary()),  # float16 16 x 16 mass per cell of the crop box, sum 1, left eyes mirrored
        pa.field("mass_y", pa.float32()),  # mass centre in field radii from the field's centre (y down)
        pa.field("mass_x", pa.float32()),  # ... and x towards the nasal side
        pa.field("mass_spread", pa.float32()),  # RMS distance of the mass from its centre, in field radii
        pa.field("rim_energy", pa.float32()),  # share of the mass on the field's outer rim (radius >= 0.85)
        pa.field("outside_energy", pa.float32()),  # share of the mass outside the field of view
        pa.field("flags", pa.list_(pa.string())),  # outside_field, rim, disc, empty_map (descriptors.FLAG_RULES)
        pa.field("overlay_png", pa.binary()),  # thumbnail: the map over the colour photograph, cropped to the fundus
    ]
)
"""The explanations table; `dataset` and `split` are also its hive partition columns."""

EXPLAIN_ERRORS_SCHEMA = pa.schema(
    list(ERRORS_SCHEMA)
    # The keys that let a rerun skip what already failed for this model.
    + [pa.field(c, pa.string()) for c in ("image_id", "dataset", "split", "model_id", "cam_method")]
)
"""explain_errors/: images `drray explain` could not read or explain."""

EXPLAIN_STREAM_SCHEMA = pa.schema(
    list(EXPLANATIONS_SCHEMA)
    + [f for f in EXPLAIN_ERRORS_SCHEMA if f.name not in EXPLANATIONS_SCHEMA.names]
)
"""What explain actors emit: explanation rows, and error rows where `reason` is not null (one stream,
so the sink writes both tables and no image is lost between them)."""

RANDOMISATION_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("dataset", pa.string()),
        pa.field("split", pa.string()),
        pa.field("label", pa.int8()),
        pa.field("model_id", pa.string()),
        pa.field("cam_method", pa.string()),
        pa.field("cascade", pa.int8()),  # top blocks re-initialised: 0 is the trained model itself
        pa.field("reinitialised", pa.string()),  # their module names, top first, comma-separated
        pa.field("draw", pa.int8()),  # which random re-initialisation of that step (seed + draw); 0 for the trained model
        pa.field("rank_corr", pa.float32()),  # Spearman correlation with the trained model's map
        pa.field("pointing_hit", pa.bool_()),  # an empty map (no peak) misses
        pa.field("chance_hit", pa.float32()),
        pa.field("empty_map", pa.bool_()),  # no positive value in the fundus: the map has no peak
        pa.field("expected_hit", pa.float32()),  # pointing_hit, or chance_hit for an empty map (see below)
        pa.field("energy_in_lesions", pa.float32()),
    ]
)
"""randomisation.parquet: the model-randomisation check (Adebayo et al. 2018) on a sample of lesion images.

`expected_hit` scores a map with no peak as what its peak would score drawn at random in the fundus
(every pixel of an empty map ties for the maximum): the image's `chance_hit`. Random networks give
many empty maps (every weighted activation negative); counted as misses they pull a random-weights
hit rate below chance, which would read as a result when it is only the scoring of "no evidence"."""

STRATEGY_OF_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("dataset", pa.string()),
        pa.field("split", pa.string()),
        pa.field("model_id", pa.string()),
        pa.field("cam_method", pa.string()),
        pa.field("strategy", pa.string()),  # its strategy among maps of its predicted grade (fundus frame)
        pa.field("referable_strategy", pa.string()),  # ... among maps of its referable / not referable call
        pa.field("camera_strategy", pa.string()),  # the same two in the camera frame (left eyes not mirrored)
        pa.field("camera_referable_strategy", pa.string()),
    ]
)
"""strategy_of.parquet (`drray audit`): the strategies of each explanation row; `drray query` joins it into explanations."""

STRATEGIES_SCHEMA = pa.schema(
    [
        pa.field("model_id", pa.string()),
        pa.field("cam_method", pa.string()),
        pa.field("frame", pa.string()),  # fundus (left eyes mirrored: anatomy lines up) or camera (as photographed)
        pa.field("grouping", pa.string()),  # grade (per predicted grade) or referable (referable vs not)
        pa.field("class", pa.string()),  # grade0..grade4, referable, not_referable
        pa.field("strategy", pa.string(), nullable=False),  # method/frame/class/sN
        pa.field("images", pa.int64()),  # maps in the strategy
        pa.field("class_images", pa.int64()),  # maps of its class
        pa.field("share", pa.float64()),  # images / class_images
        pa.field("k", pa.int16()),  # strategies its class was cut into
        pa.field("silhouette", pa.float64()),  # of that cut, on the fitting sample (null: one strategy)
        pa.field("centroid", pa.binary()),  # float16 16 x 16: the members' mean map grid (fundus frame, left eyes mirrored)
        pa.field("centroid_png", pa.binary()),
        pa.field("place", pa.string()),  # where its place is, in words (outside the field, field rim, optic disc, retina ...)
        pa.field("place_area", pa.float64()),  # share of the frame the place covers
        pa.field("place_y", pa.float64()),  # the place's centre, in crop-box half sides from the centre (y down)
        pa.field("place_x", pa.float64()),  # ... x towards the nasal side
        pa.field("place_cells", pa.binary()),  # numpy.packbits of the place's 256 grid cells, row-major
        pa.field("at_place", pa.float64()),  # share of members putting member_density x a uniform map's mass there
        pa.field("at_place_mass", pa.float64()),  # members' mean share of mass on the place
        pa.field("density", pa.float64()),  # at_place_mass / place_area: times a uniform map's mass
        pa.field("mass_y", pa.float64()),  # members' mean mass centre, field radii
        pa.field("mass_x", pa.float64()),
        pa.field("mass_spread", pa.float64()),
        pa.field("od_energy", pa.float64()),  # members' mean energy on the disc (where masks exist)
        pa.field("rim_energy", pa.float64()),
        pa.field("outside_energy", pa.float64()),
        pa.field("lesion_lift", pa.float64()),  # median energy_in_lesions / lesion_area of masked members
        pa.field("masked_images", pa.int64()),  # members with lesion masks
        pa.field("pointing_hit_rate", pa.float64()),
        pa.field("accuracy", pa.float64()),  # pred == label inside the strategy ...
        pa.field("accuracy_outside", pa.float64()),  # ... and over the rest of its class
        pa.field("referable_rate", pa.float64()),  # share called referable inside / outside
        pa.field("referable_rate_outside", pa.float64()),
        pa.field("truly_referable_rate", pa.float64()),  # share with label >= 2 inside / outside
        pa.field("truly_referable_rate_outside", pa.float64()),
        pa.field("verdict", pa.string()),  # suspect or ok (drray.audit.strategies: the rule)
        pa.field("reason", pa.string()),
        pa.field("rule", pa.string()),  # JSON: the audit settings the verdict used
        pa.field("intervened", pa.int64()),  # images predicted again (suspects only)
        pa.field("changed_removed", pa.float64()),  # share whose predicted grade changed with the place removed
        pa.field("changed_control", pa.float64()),  # ... with a control place of the same size removed
        pa.field("flips_removed", pa.float64()),  # share whose referable call flipped, place removed
        pa.field("flips_control", pa.float64()),
        pa.field("confirmed", pa.bool_()),  # the intervention confirmed the shortcut (null: not tested)
    ]
)
"""strategies.parquet (`drray audit`): what the model looks at, one row per strategy of its maps."""

INTERVENTIONS_SCHEMA = pa.schema(
    [
        pa.field("strategy", pa.string(), nullable=False),
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("dataset", pa.string()),
        pa.field("split", pa.string()),
        pa.field("label", pa.int8()),
        pa.field("pred", pa.int8()),  # the photograph as it is
        pa.field("pred_removed", pa.int8()),  # the strategy's place removed (audit.intervention)
        pa.field("pred_control", pa.int8()),  # a place of the same size elsewhere removed
        pa.field("referable_prob", pa.float32()),
        pa.field("referable_prob_removed", pa.float32()),
        pa.field("referable_prob_control", pa.float32()),
        pa.field("region_area", pa.float32()),  # share of the input the removed region covers
        pa.field("error", pa.string()),  # why the photograph could not be predicted again
    ]
)
"""interventions.parquet (`drray audit`): each suspect strategy's photographs predicted again."""

TRIALS_SCHEMA = pa.schema(
    [
        pa.field("trial_id", pa.string(), nullable=False),
        pa.field("backbone", pa.string()),
        pa.field("head", pa.string()),
        pa.field("lr", pa.float64()),
        pa.field("image_size", pa.int32()),
        pa.field("batch_size", pa.int32()),
        pa.field("best_val_qwk", pa.float64()),
        pa.field("epochs_run", pa.int32()),
        pa.field("status", pa.string()),
        pa.field("checkpoint_path", pa.string()),
        pa.field("config_json", pa.string()),
        pa.field("best_epoch", pa.int32()),
        pa.field("val_accuracy", pa.float64()),
        pa.field("val_referable_auc", pa.float64()),
        pa.field("score_method", pa.string()),  # how best_val_qwk was obtained (see drray.training.loop)
        pa.field("seconds", pa.float64()),
        pa.field("error", pa.string()),
    ]
)


METRICS_SCHEMA = pa.schema(
    [
        pa.field("dataset", pa.string()),
        pa.field("split", pa.string()),
        pa.field("model_id", pa.string()),
        pa.field("cam_method", pa.string()),  # null for grading figures: they do not depend on the map
        pa.field("family", pa.string(), nullable=False),  # grading, localisation, lesion_type, error_bucket, concentration, randomisation, observation, review
        pa.field("metric", pa.string(), nullable=False),  # qwk, pointing_hit_rate, energy_lift, cam_entropy, ...
        pa.field("grade", pa.int8()),  # true grade the figure is restricted to (confusion: the row); null: all
        pa.field("pred_grade", pa.int8()),  # confusion cells only: the predicted grade
        pa.field("lesion_type", pa.string()),  # images holding that lesion type (ma, he, ex, se, nv); null: any
        pa.field("error_bucket", pa.string()),  # exact, off_by_one, gross (|pred - label| 0, 1, >= 2); null: all
        pa.field("cascade", pa.int8()),  # randomisation: top blocks re-initialised (0: the trained model)
        pa.field("value", pa.float64()),
        pa.field("ci_low", pa.float64()),  # 95% interval, by ci_method
        pa.field("ci_high", pa.float64()),
        pa.field("ci_method", pa.string()),  # wilson, bootstrap, normal (mean +- 1.96 standard errors)
        pa.field("n", pa.int64()),  # images the figure is computed on
        pa.field("baseline", pa.float64()),  # what chance scores on the same images (pointing: mean chance_hit; energy: mean lesion_area)
        pa.field("baseline_metric", pa.string()),  # the column the baseline is the mean of
        pa.field("status", pa.string()),  # observation rows: holds, does not hold, inconclusive, too few images
    ]
)
"""metrics.parquet (`drray evaluate`): one figure per row, in long form, per dataset, split, model and CAM method."""


VERDICTS = ("on", "off", "cant_tell")
"""A grader's verdict on one map: it falls on the lesions, off them, or the grader cannot tell."""

REVIEWS_SCHEMA = pa.schema(
    [
        pa.field("review_id", pa.string(), nullable=False),  # a uuid: the name of the verdict's file
        pa.field("reviewer", pa.string(), nullable=False),
        pa.field("time", pa.timestamp("us", tz="UTC"), nullable=False),
        # The explanation row reviewed (its keys in the explanations table).
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("dataset", pa.string()),
        pa.field("split", pa.string()),
        pa.field("model_id", pa.string()),
        pa.field("cam_method", pa.string(), nullable=False),
        pa.field("verdict", pa.string(), nullable=False),  # one of VERDICTS
        # Where the reviewer clicked the lesion: pixels of the shown overlay over its height / width, in [0, 1].
        pa.field("point_y", pa.float32()),
        pa.field("point_x", pa.float32()),
    ]
)
"""reviews/ (the Explore tab, `drray.evaluate.reviews`): one Parquet file of one row per verdict, named by review_id."""


def empty_table(schema: pa.Schema) -> pa.Table:
    """A zero-row table with `schema`, so readers never special-case a missing file."""
    return schema.empty_table()
