"""The page at /ui (Gradio Blocks): upload a fundus photograph, see the grade and where the model looked.

The Explain tab sends the uploaded file's bytes, as they are, to the same Explainer as
POST /api/v1/explain (so the page and the API give the same numbers), and draws the overlay on
the colour photograph; the opacity slider redraws it without asking the model again. The
Explore tab (drray.serve.explore) browses a run directory's explanations.

Gradio serves no file but the shipped examples and its own uploads and outputs: every other path
(`/ui/gradio_api/file=/etc/passwd`, the model dir, the run directory) is refused.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from drray.schema import GRADE_NAMES, NUM_GRADES
from drray.serve.api import UI_PATH, max_body_bytes
from drray.serve.refusals import TARGETS, Refusal

log = logging.getLogger(__name__)

TITLE = "drray: diabetic-retinopathy grading with class activation maps"
TARGET_LABELS = {"pred": "predicted grade", "referable": "referable (P(grade >= 2))", "score": "severity score",
                 **{str(g): f"grade {g}: {GRADE_NAMES[g]}" for g in range(NUM_GRADES)}}
BEN_GRAHAM = {"as trained": None, "on": True, "off": False}


def _local_dirs(*paths: str | None) -> list[str]:
    return [os.path.abspath(p) for p in paths if p and "://" not in p]


def probabilities_frame(probs: list[float]):
    import pandas as pd

    return pd.DataFrame({"grade": [f"{g} {GRADE_NAMES[g]}" for g in range(NUM_GRADES)],
                         "probability": [float(p) for p in probs]})


def grade_text(result: dict[str, Any]) -> str:
    return f"## Grade {result['grade']}: {result['grade_name']}"


def referable_text(result: dict[str, Any]) -> str:
    verdict = "**Referable**" if result["referable"] else "Not referable"
    return f"{verdict}: P(moderate NPDR or worse) = {result['referable_prob']:.2f}"


def warnings_text(result: dict[str, Any]) -> str:
    return "\n".join(f"**Quality warning:** {w}" for w in result["warnings"]) if result["warnings"] else ""


def details_of(result: dict[str, Any]) -> dict[str, Any]:
    keys = ("method", "target", "target_class", "target_layer", "peak_y", "peak_x", "cam_entropy", "quality_ok",
            "image_size", "model_id", "timings_ms")
    return {k: result.get(k) for k in keys}


def build_blocks(client: Any, args: Any):
    """The page: Explain and Explore tabs."""
    import gradio as gr

    from drray.cam.overlay import blend, colorize
    from drray.serve.example_images import example_paths
    from drray.serve.explore import build_explore_tab

    methods = list(args.methods)
    with gr.Blocks(title=TITLE, analytics_enabled=False) as blocks:
        gr.Markdown(f"# {TITLE}\nFor research: not a medical device. The same service answers "
                    "`POST /api/v1/explain` (see `/docs`).")
        with gr.Tab("Explain"):
            with gr.Row():
                with gr.Column():
                    image = gr.Image(type="filepath", image_mode=None, sources=["upload", "clipboard"],
                                     label="Fundus photograph", elem_id="photo")
                    with gr.Row():
                        method = gr.Dropdown(methods, value=methods[0], label="CAM method", elem_id="method")
                        target = gr.Dropdown([(TARGET_LABELS[t], t) for t in TARGETS], value="pred",
                                             label="The map explains", elem_id="target")
                    with gr.Row():
                        opacity = gr.Slider(0.0, 1.0, value=0.4, step=0.05, label="Overlay opacity",
                                            elem_id="opacity")
                        ben_graham = gr.Radio(list(BEN_GRAHAM), value="as trained", label="Ben Graham normalisation")
                    run = gr.Button("Explain", variant="primary", elem_id="explain")
                    gr.Examples([[str(p)] for p in example_paths()], inputs=[image], label="Examples")
                with gr.Column():
                    grade = gr.Markdown(elem_id="grade")
                    referable = gr.Markdown(elem_id="referable")
                    warnings = gr.Markdown(elem_id="warnings")
                    probs = gr.BarPlot(x="grade", y="probability", y_lim=[0, 1], sort=[
                        f"{g} {GRADE_NAMES[g]}" for g in range(NUM_GRADES)], label="Grade probabilities",
                        elem_id="probs")
            with gr.Row():
                overlay = gr.Image(label="Where the model looked (map over the photograph)", type="numpy",
                                   format="png", interactive=False, elem_id="overlay")
                cam = gr.Image(label="Raw map", type="numpy", format="png", interactive=False, elem_id="cam")
            details = gr.JSON(label="Details", elem_id="details")
            drawn = gr.State(None)  # (background, map) of the last answer: redraws at another opacity

        with gr.Tab("Explore"):
            explore_choices, explore_outputs = build_explore_tab(args.run_dir)

        async def explain(image_path, method, target, opacity, ben_graham):
            if not image_path:
                raise gr.Error("Upload a fundus photograph or pick an example first.")
            data = Path(image_path).read_bytes()
            answer = await client.explain(data, method=method, target=target, ben_graham=BEN_GRAHAM.get(ben_graham),
                                          overlay_alpha=float(opacity), keep_arrays=True)
            if isinstance(answer, Refusal):
                raise gr.Error(answer.detail)
            return (grade_text(answer), referable_text(answer), warnings_text(answer),
                    probabilities_frame(answer["probs"]), answer["overlay"], colorize(answer["cam"]),
                    details_of(answer), (answer["background"], answer["cam"]))

        def redraw(drawn, opacity):
            if drawn is None:
                return gr.update()
            background, cam_map = drawn
            return blend(background, cam_map, background.shape[0], float(opacity))

        run.click(explain, inputs=[image, method, target, opacity, ben_graham],
                  outputs=[grade, referable, warnings, probs, overlay, cam, details, drawn], api_name="explain")
        opacity.release(redraw, inputs=[drawn, opacity], outputs=[overlay], api_name="redraw")
        blocks.load(explore_choices, outputs=explore_outputs, api_name=False)
    return blocks


def mount_ui(app: Any, client: Any, args: Any) -> Any:
    """Mount the page on `app` at /ui, serving no file but the examples and Gradio's own."""
    import gradio as gr

    from drray.serve.example_images import EXAMPLES_DIR

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    blocks = build_blocks(client, args)
    blocked = _local_dirs(args.model_dir, args.run_dir)
    # Gradio's own cache (uploads, drawn outputs) stays readable even when it sits under a blocked dir.
    cache = os.path.abspath(os.environ.get("GRADIO_TEMP_DIR", os.path.join(tempfile.gettempdir(), "gradio")))
    blocked = [b for b in blocked if not (cache + os.sep).startswith(b.rstrip(os.sep) + os.sep)]
    return gr.mount_gradio_app(app, blocks, path=UI_PATH, allowed_paths=[str(EXAMPLES_DIR)], blocked_paths=blocked,
                               max_file_size=max_body_bytes(args), ssr_mode=False, footer_links=["api"],
                               show_error=True)
