"""The Explore tab: a run directory's explanations, filtered, as a gallery of overlays; a click shows the full row.

The queries are plain functions over `drray.evaluate.query.connect(run_dir)` (DuckDB views of the
run's tables, local or on object storage), with every value passed as a query parameter:

    find_explanations("runs/demo", ExploreFilter(true_grade=2, error="off by two or more"))
    explanation_row("runs/demo", "synth_00012", "gradcam")
"""

# No `from __future__ import annotations`: Gradio reads `evt: gr.SelectData` from the real annotation.
import io
import logging
import os
from dataclasses import dataclass
from typing import Any

from drray.schema import GRADE_NAMES, NUM_GRADES

log = logging.getLogger(__name__)

ANY = "any"
UNKNOWN_GRADE = "unknown"
ERROR_BUCKETS = {
    "exact": "abs(pred - label) = 0",
    "off by one": "abs(pred - label) = 1",
    "off by two or more": "abs(pred - label) >= 2",
}
"""How far the predicted grade is from the true one (rows without a label are in none)."""
PEAK_HIT = {
    "hit a lesion": "pointing_hit",
    "missed": "not pointing_hit",
    "no lesion masks": "pointing_hit is null",
}
"""Whether the map's peak fell on a lesion (the pointing game; null where the image has no masks)."""
BINARY_COLUMNS = ("cam", "overlay_png")
DEFAULT_LIMIT = 48
MAX_LIMIT = 500


@dataclass(frozen=True)
class ExploreFilter:
    """Which explanation rows to show; None (or "any") keeps every row."""

    true_grade: int | str | None = None
    """0-4, or "unknown" for rows without a label."""
    pred_grade: int | None = None
    error: str | None = None
    """A key of ERROR_BUCKETS."""
    dataset: str | None = None
    peak_hit: str | None = None
    """A key of PEAK_HIT."""
    method: str | None = None
    """A CAM method (cam_method)."""
    split: str | None = None

    def where(self) -> tuple[str, list[Any]]:
        """SQL condition and its parameters; ValueError for a value no row could have."""
        conds: list[str] = []
        params: list[Any] = []
        true = _none_if_any(self.true_grade)
        if true == UNKNOWN_GRADE:
            conds.append("label is null")
        elif true is not None:
            conds.append("label = ?")
            params.append(_grade(true, "true grade"))
        pred = _none_if_any(self.pred_grade)
        if pred is not None:
            conds.append("pred = ?")
            params.append(_grade(pred, "predicted grade"))
        error = _none_if_any(self.error)
        if error is not None:
            if error not in ERROR_BUCKETS:
                raise ValueError(f"unknown error bucket {error!r}; choose one of: {', '.join(ERROR_BUCKETS)}")
            conds.append(f"label is not null and {ERROR_BUCKETS[error]}")
        hit = _none_if_any(self.peak_hit)
        if hit is not None:
            if hit not in PEAK_HIT:
                raise ValueError(f"unknown peak filter {hit!r}; choose one of: {', '.join(PEAK_HIT)}")
            conds.append(PEAK_HIT[hit])
        for column, value in (("dataset", self.dataset), ("cam_method", self.method), ("split", self.split)):
            value = _none_if_any(value)
            if value is not None:
                conds.append(f"{column} = ?")
                params.append(str(value))
        return (" and ".join(conds) or "true"), params


def _none_if_any(value: Any) -> Any:
    return None if value is None or value == "" or value == ANY else value


def _grade(value: Any, what: str) -> int:
    try:
        g = int(value)
    except (TypeError, ValueError):
        g = -1
    if not 0 <= g < NUM_GRADES:
        raise ValueError(f"{what} {value!r} is not an ICDR grade 0-{NUM_GRADES - 1}")
    return g


def _connect(run_dir: str | os.PathLike):
    from drray.evaluate.query import connect, tables

    con = connect(run_dir)
    if "explanations" not in tables(con):
        con.close()
        raise FileNotFoundError(f"run directory {str(run_dir)!r} has no explanations table yet; "
                                "run `drray explain` (or `drray demo`) to make one")
    return con


def explore_summary(run_dir: str | os.PathLike | None) -> dict[str, Any]:
    """What the run holds: rows, datasets, methods and splits of its explanations (or why there are none)."""
    if not run_dir:
        return {"ok": False, "message": "no run directory was given to this server (application argument run_dir)"}
    try:
        con = _connect(run_dir)
    except FileNotFoundError as e:
        return {"ok": False, "message": str(e)}
    try:
        def distinct(column: str) -> list[str]:
            rows = con.execute(f"select distinct {column} from explanations where {column} is not null order by 1")
            return [str(r[0]) for r in rows.fetchall()]

        return {"ok": True, "run_dir": str(run_dir),
                "rows": int(con.execute("select count(*) from explanations").fetchone()[0]),
                "datasets": distinct("dataset"), "methods": distinct("cam_method"), "splits": distinct("split"),
                "message": ""}
    finally:
        con.close()


def find_explanations(run_dir: str | os.PathLike, flt: ExploreFilter = ExploreFilter(),
                      limit: int = DEFAULT_LIMIT) -> tuple[list[dict[str, Any]], int]:
    """(up to `limit` matching rows with their overlay PNG, number of rows that match), worst errors first."""
    limit = max(1, min(int(limit), MAX_LIMIT))
    where, params = flt.where()
    con = _connect(run_dir)
    try:
        total = int(con.execute(f"select count(*) from explanations where {where}", params).fetchone()[0])
        cur = con.execute(
            "select image_id, dataset, split, label, pred, cam_method, referable_prob, pointing_hit, quality_ok, "
            f"overlay_png from explanations where {where} "
            "order by abs(coalesce(pred - label, 0)) desc, image_id, cam_method limit ?", [*params, limit])
        columns = [d[0] for d in cur.description]
        return [dict(zip(columns, r)) for r in cur.fetchall()], total
    finally:
        con.close()


def explanation_row(run_dir: str | os.PathLike, image_id: str, method: str) -> dict[str, Any]:
    """Every column of one explanation row (binary ones as their size), with the image's manifest row."""
    con = _connect(run_dir)
    try:
        from drray.evaluate.query import tables

        cur = con.execute("select * from explanations where image_id = ? and cam_method = ? limit 1",
                          [image_id, method])
        columns = [d[0] for d in cur.description]
        found = cur.fetchone()
        if found is None:
            raise KeyError(f"no explanation of image {image_id!r} with method {method!r} in {run_dir}")
        row = {c: _plain(c, v) for c, v in zip(columns, found)}
        if row.get("label") is not None:
            row["label_name"] = GRADE_NAMES[int(row["label"])]
        if row.get("pred") is not None:
            row["pred_name"] = GRADE_NAMES[int(row["pred"])]
        if "manifest" in tables(con):
            cur = con.execute("select * from manifest where image_id = ? limit 1", [image_id])
            mcols = [d[0] for d in cur.description]
            mrow = cur.fetchone()
            if mrow is not None:
                row["manifest"] = {c: _plain(c, v) for c, v in zip(mcols, mrow)}
        return row
    finally:
        con.close()


def _plain(column: str, value: Any) -> Any:
    """A value JSON shows: binary columns as their size, numpy and lists as lists, NaN as null."""
    import math

    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"<{len(value)} bytes>"
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [_plain(column, v) for v in value]
    return value


def caption(row: dict[str, Any]) -> str:
    true = "?" if row.get("label") is None else str(row["label"])
    hit = {True: " · peak on a lesion", False: " · peak missed", None: ""}[row.get("pointing_hit")]
    return f"{row['image_id']} · true {true} / pred {row['pred']} · {row['cam_method']}{hit}"


def thumbnail(png: bytes | None):
    """The overlay PNG as a PIL image for the gallery (None where the row has none)."""
    if not png:
        return None
    from PIL import Image

    return Image.open(io.BytesIO(png)).convert("RGB")


# ------------------------------------------------------------------------------------- the tab
def build_explore_tab(run_dir: str | None):
    """The Explore tab's components and events, inside an open `gr.Blocks` / `gr.Tab`.

    Returns (function, outputs) for the page's load event: the dataset and method choices of the run
    as it is when the page opens (a run being explained gains rows while the server runs).
    """
    import gradio as gr

    grades = [ANY, *(str(g) for g in range(NUM_GRADES))]
    gr.Markdown(f"Explanations of the run directory `{run_dir}`: filter them, then click a thumbnail "
                "for its full row." if run_dir else "No run directory was given to this server.")
    status = gr.Markdown(elem_id="explore-status")
    with gr.Row():
        true_grade = gr.Dropdown([*grades, UNKNOWN_GRADE], value=ANY, label="True grade", elem_id="explore-true")
        pred_grade = gr.Dropdown(grades, value=ANY, label="Predicted grade", elem_id="explore-pred")
        error = gr.Dropdown([ANY, *ERROR_BUCKETS], value=ANY, label="Error", elem_id="explore-error")
        peak = gr.Dropdown([ANY, *PEAK_HIT], value=ANY, label="Peak", elem_id="explore-peak")
    found = explore_summary(run_dir)  # the page's load event refreshes these as the run grows
    with gr.Row():
        dataset = gr.Dropdown([ANY, *found.get("datasets", [])], value=ANY, label="Dataset",
                              elem_id="explore-dataset")
        method = gr.Dropdown([ANY, *found.get("methods", [])], value=ANY, label="CAM method",
                             elem_id="explore-method")
        limit = gr.Slider(1, MAX_LIMIT, value=DEFAULT_LIMIT, step=1, label="Thumbnails at most")
        show = gr.Button("Show", variant="primary", elem_id="explore-show")
    gallery = gr.Gallery(label="Overlays (worst errors first)", columns=6, height="auto", format="png",
                         allow_preview=False, elem_id="explore-gallery")
    keys = gr.State([])
    with gr.Row():
        chosen = gr.Image(label="Overlay", type="pil", format="png", interactive=False, elem_id="explore-overlay")
        details = gr.JSON(label="Full row", elem_id="explore-row")

    def choices():
        s = explore_summary(run_dir)
        if not s["ok"]:
            return (gr.update(choices=[ANY], value=ANY), gr.update(choices=[ANY], value=ANY), s["message"])
        return (gr.update(choices=[ANY, *s["datasets"]], value=ANY), gr.update(choices=[ANY, *s["methods"]], value=ANY),
                f"{s['rows']} explanation rows: datasets {', '.join(s['datasets']) or '-'}; "
                f"methods {', '.join(s['methods']) or '-'}")

    def search(true_grade, pred_grade, error, peak, dataset, method, limit):
        if not run_dir:
            raise gr.Error("no run directory was given to this server (application argument run_dir)")
        flt = ExploreFilter(true_grade=true_grade, pred_grade=pred_grade, error=error, dataset=dataset,
                            peak_hit=peak, method=method)
        try:
            rows, total = find_explanations(run_dir, flt, int(limit))
        except (ValueError, FileNotFoundError) as e:
            raise gr.Error(str(e)) from None
        items = [(thumbnail(r["overlay_png"]), caption(r)) for r in rows if r.get("overlay_png")]
        shown = f"{total} rows match; showing {len(items)}" if total else "no rows match these filters"
        return items, [(r["image_id"], r["cam_method"]) for r in rows if r.get("overlay_png")], shown

    def show_row(keys, evt: gr.SelectData):
        if evt is None or evt.index is None or not keys:
            return None, None
        index = evt.index if isinstance(evt.index, int) else evt.index[0]
        image_id, method_name = keys[index]
        return _overlay_of(run_dir, image_id, method_name), explanation_row(run_dir, image_id, method_name)

    filters = [true_grade, pred_grade, error, peak, dataset, method, limit]
    gr.on([show.click], search, inputs=filters, outputs=[gallery, keys, status], api_name="search")
    gallery.select(show_row, inputs=[keys], outputs=[chosen, details], api_name="show_row")
    return choices, [dataset, method, status]


def _overlay_of(run_dir: str, image_id: str, method: str):
    con = _connect(run_dir)
    try:
        found = con.execute("select overlay_png from explanations where image_id = ? and cam_method = ? limit 1",
                            [image_id, method]).fetchone()
    finally:
        con.close()
    return thumbnail(found[0]) if found else None
