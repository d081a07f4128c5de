"""The Explore tab: a run directory's explanations, filtered, as a gallery of overlays; a click shows the full row.

The queries are plain functions over `drray.evaluate.query.connect(run_dir)` (DuckDB views of the
run's tables, local or on object storage), with every value passed as a query parameter:

    find_explanations("runs/demo", ExploreFilter(true_grade=2, error="off by two or more"))
    explanation_row("runs/demo", "synth_00012", "gradcam")

Once `drray audit` has run, rows filter by strategy too (the `strategy` column the query layer joins
in). A selected row gets a review panel: a grader says whether its map falls on the lesions
(`submit_review`, stored by `drray.evaluate.reviews`), optionally clicking the lesion on the overlay
first. The page holds a token per verdict (a uuid issued with the row and after each recording) and
sends it with the click, so a click submitted twice is recorded once.
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
REVIEW_BUTTONS = {"on": "On the lesions", "off": "Off the lesions", "cant_tell": "Can't tell"}
"""The review panel's buttons, by verdict (schema.VERDICTS)."""
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
    strategy: str | None = None
    """A strategy id of `drray audit` (the `strategies` view); only runs that were audited have one."""

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
        strategy = _none_if_any(self.strategy)
        if strategy is not None:  # a strategy of any frame and grouping (its id says which)
            from drray.evaluate.query import STRATEGY_COLUMNS

            conds.append(f"? in ({', '.join(STRATEGY_COLUMNS)})")
            params.append(str(strategy))
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


def strategy_choices(con) -> list[tuple[str, str]]:
    """(label, strategy id) of each strategy of an audited run, " (suspect)" after suspects; [] before an audit."""
    from drray.evaluate.query import tables

    if "strategies" not in tables(con) or "strategy_of" not in tables(con):
        return []
    rows = con.execute("select distinct strategy, verdict from strategies where strategy is not null order by 1")
    return [(f"{sid} (suspect)" if verdict == "suspect" else str(sid), str(sid)) for sid, verdict in rows.fetchall()]


def explore_summary(run_dir: str | os.PathLike | None) -> dict[str, Any]:
    """What the run holds: rows, datasets, methods, splits and strategies of its explanations (or why none)."""
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
                "strategies": strategy_choices(con), "message": ""}
    finally:
        con.close()


def find_explanations(run_dir: str | os.PathLike, flt: ExploreFilter = ExploreFilter(),
                      limit: int = DEFAULT_LIMIT) -> tuple[list[dict[str, Any]], int]:
    """(up to `limit` matching rows with their overlay PNG, number of rows that match), worst errors first."""
    limit = max(1, min(int(limit), MAX_LIMIT))
    where, params = flt.where()
    con = _connect(run_dir)
    try:
        if _none_if_any(flt.strategy) is not None and not strategy_choices(con):
            raise ValueError(f"run directory {str(run_dir)!r} has no strategies to filter by; "
                             "run `drray audit` on it first")
        total = int(con.execute(f"select count(*) from explanations where {where}", params).fetchone()[0])
        cur = con.execute(
            "select image_id, dataset, split, model_id, label, pred, cam_method, referable_prob, pointing_hit, "
            f"quality_ok, overlay_png from explanations where {where} "
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


# ------------------------------------------------------------------------------- review panel
def review_key(row: dict[str, Any]) -> dict[str, Any]:
    """The keys that name a row's map (`reviews.MAP_KEYS`), from a row of `find_explanations`."""
    from drray.evaluate.reviews import MAP_KEYS

    return {k: row.get(k) for k in MAP_KEYS}


def click_point(index: Any, size: tuple[int, int] | None) -> tuple[float, float]:
    """(point_y, point_x) of a click at pixel index = [x, y] of an overlay of size (width, height): the
    pixel's centre over the side, so every pixel of the overlay lies inside [0, 1]."""
    if size is None or not index or len(index) != 2:
        raise ValueError("click on the overlay of a selected row to mark the lesion")
    (x, y), (w, h) = index, size
    return (float(y) + 0.5) / h, (float(x) + 0.5) / w


def submit_review(run_dir: str | os.PathLike, key: dict[str, Any] | None, reviewer: str, verdict: str,
                  point: tuple[float, float] | None = None, token: str | None = None) -> str:
    """Record one verdict on the selected map; the status line to show. ValueError says what is wrong.

    token: the page's uuid for this verdict: a second submit with the same token records nothing more.
    """
    from drray.evaluate.reviews import record_review

    if not key:
        raise ValueError("select a row first: click a thumbnail")
    point_y, point_x = point if point else (None, None)
    review = record_review(run_dir, reviewer=reviewer, verdict=verdict, point_y=point_y, point_x=point_x,
                           review_id=token or None, **key)
    where = "" if review.point_y is None else f" at y {review.point_y:.2f}, x {review.point_x:.2f}"
    return f"recorded: {review.verdict}, by {review.reviewer}, for {review.image_id} {review.cam_method}{where}"


def verdicts_text(run_dir: str | os.PathLike, key: dict[str, Any] | None) -> str:
    """How many verdicts the selected map has (each reviewer's latest)."""
    from drray.evaluate.reviews import VERDICT_NAMES, map_verdicts

    if not key:
        return ""
    counts = map_verdicts(run_dir, **key)
    if not counts["reviewers"]:
        return "No verdict on this map yet."
    parts = ", ".join(f"{VERDICT_NAMES[v]} {counts[v]}" for v in VERDICT_NAMES)
    return f"Verdicts on this map: {parts} ({counts['reviewers']} reviewer{'s' * (counts['reviewers'] != 1)})."


# ------------------------------------------------------------------------------------- the tab
def build_explore_tab(run_dir: str | None):
    """The Explore tab's components and events, inside an open `gr.Blocks` / `gr.Tab`.

    Returns (function, outputs) for the page's load event: the dataset, method and strategy choices of
    the run as it is when the page opens (a run being explained or audited changes while the server runs).
    """
    import gradio as gr

    from drray.evaluate.reviews import new_review_id

    grades = [ANY, *(str(g) for g in range(NUM_GRADES))]
    gr.Markdown(f"Explanations of the run directory `{run_dir}`: filter them, then click a thumbnail "
                "for its full row and to review its map." if run_dir else "No run directory was given to this server.")
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
        strategy = gr.Dropdown([(ANY, ANY), *found.get("strategies", [])], value=ANY, label="Strategy",
                               visible=bool(found.get("strategies")), elem_id="explore-strategy")
        limit = gr.Slider(1, MAX_LIMIT, value=DEFAULT_LIMIT, step=1, label="Thumbnails at most")
        show = gr.Button("Show", variant="primary", elem_id="explore-show")
    gallery = gr.Gallery(label="Overlays (worst errors first)", columns=6, height="auto", format="png",
                         allow_preview=False, elem_id="explore-gallery")
    keys = gr.State([])
    with gr.Row():
        chosen = gr.Image(label="Overlay (click the lesion to mark it)", type="pil", format="png", interactive=False,
                          elem_id="explore-overlay")
        details = gr.JSON(label="Full row", elem_id="explore-row")
    with gr.Column(visible=False, elem_id="review-panel") as panel:
        gr.Markdown("**Does this map fall on the lesions?** Optionally click the lesion on the overlay, "
                    "then give your verdict.")
        with gr.Row():
            reviewer = gr.Textbox(label="Reviewer", placeholder="your name", max_lines=1, elem_id="review-reviewer")
            buttons = {v: gr.Button(label, elem_id=f"review-{v}") for v, label in REVIEW_BUTTONS.items()}
        review_status = gr.Markdown(elem_id="review-status")
        review_count = gr.Markdown(elem_id="review-count")
        token = gr.Textbox(visible="hidden", elem_id="review-token")  # held by the page, sent with each click
    selected = gr.State(None)  # {"key": the map's keys, "size": the overlay's (width, height)}
    point = gr.State(None)

    def choices():
        s = explore_summary(run_dir)
        if not s["ok"]:
            return (gr.update(choices=[ANY], value=ANY), gr.update(choices=[ANY], value=ANY), s["message"],
                    gr.update(choices=[(ANY, ANY)], value=ANY, visible=False))
        return (gr.update(choices=[ANY, *s["datasets"]], value=ANY), gr.update(choices=[ANY, *s["methods"]], value=ANY),
                f"{s['rows']} explanation rows: datasets {', '.join(s['datasets']) or '-'}; "
                f"methods {', '.join(s['methods']) or '-'}",
                gr.update(choices=[(ANY, ANY), *s["strategies"]], value=ANY, visible=bool(s["strategies"])))

    def search(true_grade, pred_grade, error, peak, dataset, method, limit, strategy=ANY):
        if not run_dir:
            raise gr.Error("no run directory was given to this server (application argument run_dir)")
        flt = ExploreFilter(true_grade=true_grade, pred_grade=pred_grade, error=error, dataset=dataset,
                            peak_hit=peak, method=method, strategy=strategy)
        try:
            rows, total = find_explanations(run_dir, flt, int(limit))
        except (ValueError, FileNotFoundError) as e:
            raise gr.Error(str(e)) from None
        rows = [r for r in rows if r.get("overlay_png")]
        items = [(thumbnail(r["overlay_png"]), caption(r)) for r in rows]
        shown = f"{total} rows match; showing {len(items)}" if total else "no rows match these filters"
        return items, [review_key(r) for r in rows], shown

    def show_row(keys, evt: gr.SelectData):
        if evt is None or evt.index is None or not keys:
            return (None, None, None, None, gr.update(), "", "", "")
        index = evt.index if isinstance(evt.index, int) else evt.index[0]
        key = keys[index]
        image = _overlay_of(run_dir, key["image_id"], key["cam_method"])
        return (image, explanation_row(run_dir, key["image_id"], key["cam_method"]),
                {"key": key, "size": image.size if image is not None else None}, None, gr.update(visible=True), "",
                verdicts_text(run_dir, key), new_review_id())

    def set_point(selected, evt: gr.SelectData):
        try:
            y, x = click_point(evt.index if evt is not None else None, selected and selected["size"])
        except ValueError as e:
            return None, str(e)
        return (y, x), f"lesion marked at y {y:.2f}, x {x:.2f} of the overlay; now give your verdict"

    def recorder(verdict: str):
        def record(selected, reviewer, point, token):
            key = selected and selected["key"]
            try:
                text = submit_review(run_dir, key, reviewer, verdict, point, token)
            except (ValueError, FileNotFoundError) as e:
                return f"not recorded: {e}", gr.update(), gr.update(), gr.update()
            return text, verdicts_text(run_dir, key), None, new_review_id()
        return record

    filters = [true_grade, pred_grade, error, peak, dataset, method, limit, strategy]
    gr.on([show.click], search, inputs=filters, outputs=[gallery, keys, status], api_name="search")
    gallery.select(show_row, inputs=[keys], outputs=[chosen, details, selected, point, panel, review_status,
                                                     review_count, token], api_name="show_row")
    chosen.select(set_point, inputs=[selected], outputs=[point, review_status], api_name=False)
    for verdict, button in buttons.items():
        button.click(recorder(verdict), inputs=[selected, reviewer, point, token],
                     outputs=[review_status, review_count, point, token], api_name=f"review_{verdict}")
    return choices, [dataset, method, status, strategy]


def _overlay_of(run_dir: str, image_id: str, method: str):
    con = _connect(run_dir)
    try:
        found = con.execute("select overlay_png from explanations where image_id = ? and cam_method = ? limit 1",
                            [image_id, method]).fetchone()
    finally:
        con.close()
    return thumbnail(found[0]) if found else None
