"""The one predictor: a model dir -> grades and maps for prepared uint8 batches, or one photograph end to end.

    predictor = Predictor.from_model_dir("runs/demo/model", methods=["gradcam"])
    p = predictor.predict(images)          # images: (B, S, S, 3) uint8, prepared with the model's preprocessing
    e = predictor.explain(images)          # + one (B, S, S) map in [0, 1] per method
    rows = predictor.score_maps(e.maps["gradcam"], geometries, masks)   # each map's explanation-row columns
    result = predictor.explain_image("eye.jpg")   # read, preprocess, explain, score, overlay: one dict

Batch explanation (drray.explain.actor), the randomisation check and layer selection
(drray.explain), grading a split (drray.explain.grade), training's validation
(drray.training.loop), `drray.explain_image` and serving (drray.serve) all go through here, so
"uint8 batch -> normalise -> model -> grade probabilities -> maps -> scored columns" is written
once; the scores themselves are drray.scores'.
The model dir carries its preprocessing (model.json), so a photograph becomes the same network
input in training, batch explanation and serving.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from drray.config import CamConfig, PreprocessConfig
from drray.data.images import DEFAULT_MAX_PIXELS
from drray.schema import GRADE_NAMES, REFERABLE_MIN_GRADE, REFERABLE_THRESHOLD

if TYPE_CHECKING:
    import torch

    from drray.data.geometry import Geometry
    from drray.data.images import Photo
    from drray.data.preprocess import Prepared
    from drray.models.model import DRModel, ModelFiles
    from drray.scores.map_scores import ScoredMap

log = logging.getLogger(__name__)

QUALITY_NO_FUNDUS = ("no circular field of view was found: a centre crop was graded; "
                     "the grade and the map are unreliable (is this a fundus photograph?)")


# ------------------------------------------------------------------------------------ functions
def to_input(model: "DRModel", images: Any, device: "torch.device") -> "torch.Tensor":
    """(B, S, S, 3) uint8 prepared images (numpy or tensor) -> (B, 3, S, S) normalised float32 on `device`."""
    import torch

    if isinstance(images, np.ndarray):
        # Ray hands out read-only views of the object store; torch wants writable memory.
        images = torch.from_numpy(np.require(images, requirements=["C", "W"]))
    return model.normalize(images.to(device, non_blocking=True))


def forward_outputs(model: "DRModel", images: Any, device: "torch.device", autocast_dtype=None) -> "torch.Tensor":
    """Raw (B, K) float32 outputs on the CPU for prepared uint8 images, without gradients."""
    import contextlib

    import torch

    x = to_input(model, images, device)
    amp = (torch.autocast(device_type=device.type, dtype=autocast_dtype) if autocast_dtype is not None
           else contextlib.nullcontext())
    with torch.inference_mode(), amp:
        return model(x).float().cpu()


def read_outputs(model: "DRModel", outputs: "torch.Tensor") -> tuple[np.ndarray, np.ndarray]:
    """Raw outputs -> ((B, 5) float32 grade probabilities, (B,) int64 grades), as the model's head reads them."""
    import torch

    with torch.inference_mode():
        return (model.grade_probs(outputs).float().cpu().numpy().astype(np.float32),
                model.predict(outputs).cpu().numpy().astype(np.int64))


@dataclass
class Predictions:
    """What `Predictor.predict` returns for a batch of B images."""

    outputs: np.ndarray
    """(B, K) raw outputs (5 logits, or the ordinal score)."""
    probs: np.ndarray
    """(B, 5) grade probabilities, rows summing to 1."""
    preds: np.ndarray
    """(B,) predicted grades."""

    @property
    def referable_prob(self) -> np.ndarray:
        """(B,) P(grade >= 2)."""
        return self.probs[:, REFERABLE_MIN_GRADE:].sum(axis=1)


@dataclass
class Explanations(Predictions):
    """What `Predictor.explain` returns: predictions plus, per method, maps on the input grid."""

    maps: dict[str, np.ndarray] = field(default_factory=dict)
    """method -> (B, S, S) float32 in [0, 1]."""
    targets: np.ndarray | None = None
    """(B,) the grade each map explains; -1 where the target is a score (ordinal "pred", "score", "referable")."""
    faithfulness: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    """method -> {"road_score", "deletion_auc", "insertion_auc"}: (B,) arrays, with cam.faithfulness."""


DEFAULT_METHOD = "gradcam"


def default_methods(card: Any, methods: Sequence[str] | None) -> list[str]:
    """`methods` as given; None: the method chosen for the model (its card's `cam_method`), else gradcam."""
    if methods is not None:
        return list(methods)
    return [getattr(card, "cam_method", None) or DEFAULT_METHOD]


# ------------------------------------------------------------------------------------ predictor
class Predictor:
    """A model and its CAM engine, loaded once (per process, actor or Serve replica).

    methods: CAM methods `explain` runs by default (`drray.CAM_METHODS`); empty: predictions only.
    target: what the maps explain ("pred", "referable", "score" or a grade 0-4).
    cam: map size, pointing tolerance, overlay size, faithfulness, target layer or stride (`CamConfig`).
    device: "cpu", "cuda", ...; default CUDA when available.
    Calls are serialised by a lock: the CAM engine toggles the model's state for the duration of a call.
    """

    def __init__(self, model: "DRModel", *, methods: Sequence[str] | None = None, target: Any = None,
                 cam: CamConfig | None = None, device: Any = None, max_pixels: int = DEFAULT_MAX_PIXELS,
                 autocast_dtype: Any = None):
        import torch

        from drray.cam.methods import get_method
        from drray.cam.targets import parse_target

        self.cam = cam or CamConfig()
        self.device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.eval().to(self.device)
        names = self.cam.methods if methods is None else list(methods)
        self.methods: list[str] = [get_method(m).name for m in default_methods(model.card, names)]
        if len(set(self.methods)) != len(self.methods):
            raise ValueError(f"CAM methods repeat: {self.methods}")
        self.target = parse_target(self.cam.target if target is None else target)
        self.max_pixels = int(max_pixels)
        self.autocast_dtype = autocast_dtype
        self._lock = threading.Lock()
        self._engine = None

    @classmethod
    def from_model_dir(cls, model_dir: "str | os.PathLike | ModelFiles", *, methods: Sequence[str] | None = None,
                       target: Any = None, cam: CamConfig | None = None, device: Any = None,
                       max_pixels: int = DEFAULT_MAX_PIXELS, autocast_dtype: Any = None) -> "Predictor":
        """Load a model dir (local path, URI, or the `ModelFiles` an actor received) once."""
        from drray.models.model import load_model

        return cls(load_model(model_dir), methods=methods, target=target, cam=cam, device=device,
                   max_pixels=max_pixels, autocast_dtype=autocast_dtype)

    # -------------------------------------------------------------------------------- properties
    @property
    def card(self):
        return self.model.card

    @property
    def model_id(self) -> str:
        return self.model.card.model_id

    @property
    def input_size(self) -> int:
        return int(self.model.card.input_size)

    @property
    def preprocess(self) -> PreprocessConfig:
        return self.model.card.preprocess_config()

    @property
    def engine(self):
        """The CAM engine (one for every method: the fast ones share one forward and one backward pass)."""
        if self._engine is None:
            from drray.cam import CamEngine

            layer = {"target_layer": self.cam.target_layer} if getattr(self.cam, "target_layer", None) else {}
            stride = {"target_stride": self.cam.target_stride} if getattr(self.cam, "target_stride", None) else {}
            self._engine = CamEngine(self.model, method=self.methods[0] if self.methods else DEFAULT_METHOD,
                                     target=self.target, device=self.device, autocast_dtype=self.autocast_dtype,
                                     **layer, **stride)
        return self._engine

    @property
    def target_layer(self) -> str:
        """Dotted name of the layer the maps are computed at."""
        return self.engine.target_layer_name

    def describe(self) -> dict[str, Any]:
        """What the model is: for `GET /api/v1/model`, reports and logs."""
        card = self.model.card
        return {
            "model_id": card.model_id, "backbone": card.timm_name, "head": card.head,
            "input_size": card.input_size, "preprocess": dict(card.preprocess), "metrics": dict(card.metrics),
            "target_layer": self.target_layer, "target_stride": getattr(self.engine, "target_stride", None),
            "methods": list(self.methods), "target": str(self.cam.target if self.target is None else self.target.kind),
            "grades": {str(g): name for g, name in enumerate(GRADE_NAMES)}, "created": card.created,
            "drray_version": card.drray_version, "device": str(self.device),
        }

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()

    # ----------------------------------------------------------------------------------- batches
    def predict(self, images: Any) -> Predictions:
        """Grades of (B, S, S, 3) uint8 images prepared with this model's preprocessing."""
        with self._lock:
            outputs = forward_outputs(self.model, images, self.device, self.autocast_dtype)
            probs, preds = read_outputs(self.model, outputs)
        return Predictions(outputs.numpy(), probs, preds)

    def explain(self, images: Any, methods: Sequence[str] | None = None, target: Any = None) -> Explanations:
        """Grades and maps (one per method, on the S x S input grid) for prepared uint8 images."""
        from drray.cam.methods import get_method
        from drray.cam.targets import parse_target

        chosen = self.methods if methods is None else [get_method(m).name for m in methods]
        if not chosen:
            p = self.predict(images)
            return Explanations(p.outputs, p.probs, p.preds)
        tgt = self.target if target is None else parse_target(target)
        with self._lock:
            x = to_input(self.model, images, self.device)
            res = self.engine(x, target=tgt, output_size=(self.input_size, self.input_size), methods=chosen)
            out = Explanations(res["logits"].numpy(), res["probs"].numpy().astype(np.float32),
                               res["preds"].numpy().astype(np.int64),
                               maps={m: res["cams_by_method"][m].float().numpy() for m in chosen},
                               targets=res["targets"].numpy())
            if self.cam.faithfulness:
                from drray.cam.faithfulness import faithfulness_scores

                for m in chosen:
                    out.faithfulness[m] = faithfulness_scores(self.model, x, out.maps[m], tgt, out.targets, out.preds)
        return out

    def score_maps(self, maps: Sequence[np.ndarray], geometries: Sequence["Geometry"],
                   masks: Sequence[np.ndarray | None] | None = None, backgrounds: Sequence[np.ndarray] | None = None,
                   *, eyes: Sequence[str | None] | None = None, overlay_size: int | None = None,
                   overlay_alpha: float = 0.4) -> list["ScoredMap"]:
        """One method's maps of a batch -> each map clipped to its field of view, with its explanation-row columns.

        The one scoring step of drray (drray.scores.map_scores): the explain actors, the randomisation
        check, layer selection and serving all call it, and add only their own columns.
        maps: (B, S, S) maps in [0, 1] on the input grid (`explain`'s `maps[method]`).
        geometries: each photograph's `drray.data.geometry.Geometry` (crop box, field of view).
        masks: each photograph's lesion bits (drray.data.mask_bits), or None: lesion scores stay null.
        backgrounds: (s, s, 3) uint8 photographs the overlay is drawn on, cropped to the crop box as
        the map is; None draws none. overlay_size: its side (default `cam.overlay_size`).
        eyes: each photograph's eye ("left" / "right" / None): the descriptors mirror left eyes.
        """
        from drray.cam.overlay import blend, encode_png
        from drray.scores.map_scores import map_scores

        if len(geometries) != len(maps) or (masks is not None and len(masks) != len(maps)) or (
                backgrounds is not None and len(backgrounds) != len(maps)):
            raise ValueError(f"score_maps: {len(maps)} maps need one geometry (got {len(geometries)}), and one "
                             f"mask and background each where given")
        stride = self._engine.target_stride if self._engine is not None else None
        size = int(overlay_size or self.cam.overlay_size)
        scored = []
        for i, cam in enumerate(maps):
            s = map_scores(cam, geometries[i], None if masks is None else masks[i], cam_size=self.cam.cam_size,
                           tolerance=self.cam.pointing_tolerance, grid_stride=stride,
                           eye=None if eyes is None else eyes[i])
            if backgrounds is not None:
                s.overlay = blend(backgrounds[i], s.cam, size, overlay_alpha)
                s.columns["overlay_png"] = encode_png(s.overlay)
            scored.append(s)
        return scored

    # ------------------------------------------------------------------------------- one image
    # explain_image in three steps, so a server can run the middle one on a batch of photographs:
    # prepare_photo (decode + preprocess) -> explain (B stacked inputs) -> explanation_of (one row).
    def prepare_photo(self, image: "str | os.PathLike | bytes | np.ndarray", *,
                      ben_graham: bool | None = None) -> "PhotoInput":
        """Read and preprocess one photograph as this model expects; raises `ImageError` for bad images.

        image: a file path, encoded bytes (JPEG, PNG, ...), or an (H, W, 3) uint8 RGB array.
        ben_graham: override the model's Ben Graham setting (None keeps what it was trained with).
        """
        from drray.data.decode import decode_photo_prepared
        from drray.data.images import Photo, read_bytes
        from drray.data.preprocess import prepare

        start = time.perf_counter()
        cfg = self.preprocess
        if ben_graham is not None and bool(ben_graham) != cfg.ben_graham:
            import dataclasses

            cfg = dataclasses.replace(cfg, ben_graham=bool(ben_graham))
        # Files and bytes go through the reader training and batch explanation use (reduced-scale
        # JPEG decoding included), so a photograph becomes the same network input everywhere.
        if isinstance(image, np.ndarray):
            photo = Photo(image, 1, (int(image.shape[0]), int(image.shape[1])))
            prepared = prepare(image, cfg)
        elif isinstance(image, (bytes, bytearray, memoryview, str, Path, os.PathLike)):
            data, where = ((bytes(image), "uploaded image") if isinstance(image, (bytes, bytearray, memoryview))
                           else (read_bytes(image), str(image)))
            prepared, photo = decode_photo_prepared(data, where, cfg, self.max_pixels)
        else:
            raise TypeError(f"explain_image takes a path, encoded bytes or an (H, W, 3) uint8 array, "
                            f"got {type(image).__name__}")
        return PhotoInput(prepared, photo, (time.perf_counter() - start) * 1000)

    def method_name(self, method: str | None = None) -> str:
        """The canonical name of `method` (default: the predictor's first method, else gradcam)."""
        from drray.cam.methods import get_method

        return get_method(method).name if method else (self.methods[0] if self.methods else DEFAULT_METHOD)

    def explanation_of(self, item: "PhotoInput", out: Explanations, index: int, method: str, target: Any = None, *,
                       overlay_alpha: float = 0.4, overlay_size: int | None = None,
                       keep_background: bool = False) -> dict[str, Any]:
        """Row `index` of `explain`'s answer for the photograph `item`: scores, PNGs and warnings as plain values.

        keep_background: also return `background`, the crop of the colour photograph the overlay is
        drawn on, so a caller can redraw the overlay at another opacity without the model.
        """
        from drray.cam.overlay import colorize, encode_png
        from drray.data.preprocess import crop_resized

        prepared, photo = item.prepared, item.photo
        size = int(overlay_size or max(self.cam.overlay_size, min(512, prepared.box.side // photo.scale)))
        # The map covers the crop box exactly: drawn on the colour photograph cut to that box.
        background = crop_resized(photo.rgb, prepared.box, size, photo.scale)
        scored = self.score_maps(out.maps[method][index:index + 1], [item.geometry], backgrounds=[background],
                                 overlay_size=size, overlay_alpha=overlay_alpha)[0]
        cam, scores = scored.cam, scored.columns
        grade, referable_prob = int(out.preds[index]), float(out.referable_prob[index])
        explained = int(out.targets[index]) if out.targets is not None else -1
        result = {
            "model_id": self.model_id,
            "grade": grade,
            "grade_name": GRADE_NAMES[grade],
            "probs": [float(p) for p in out.probs[index]],
            "referable_prob": referable_prob,
            "referable": bool(referable_prob >= REFERABLE_THRESHOLD),
            "method": method,
            "target": (target if target is not None else self.cam.target),
            "target_class": explained if explained >= 0 else None,
            "target_layer": self.target_layer,
            "cam": cam,
            "cam_png": encode_png(colorize(cam)),
            "overlay": scored.overlay,
            "overlay_png": scores["overlay_png"],
            "peak_y": scores["peak_y"],
            "peak_x": scores["peak_x"],
            "cam_entropy": scores["cam_entropy"],
            "quality_ok": bool(prepared.quality_ok),
            "warnings": [] if prepared.quality_ok else [QUALITY_NO_FUNDUS],
            "image_size": [int(photo.shape[1]), int(photo.shape[0])],
        }
        if keep_background:
            result["background"] = background
        return result

    def explain_image(self, image: "str | os.PathLike | bytes | np.ndarray", *, method: str | None = None,
                      target: Any = None, ben_graham: bool | None = None, overlay_alpha: float = 0.4,
                      overlay_size: int | None = None) -> dict[str, Any]:
        """Read, preprocess, grade, explain and score one photograph; overlays on the colour photograph.

        image: a file path, encoded bytes (JPEG, PNG, ...), or an (H, W, 3) uint8 RGB array.
        method: one CAM method (default the predictor's first, else gradcam); target: as `explain`.
        ben_graham: override the model's Ben Graham setting (None keeps what it was trained with).
        Returns plain values: grade, grade_name, probs, referable_prob, referable, method, target,
        target_class, cam ((S, S) float32), cam_png, overlay ((s, s, 3) uint8), overlay_png, peak_y,
        peak_x, cam_entropy, quality_ok, warnings, timings_ms, model_id, target_layer.
        """
        start = time.perf_counter()
        item = self.prepare_photo(image, ben_graham=ben_graham)
        timings: dict[str, float] = {"preprocess_ms": item.preprocess_ms}
        name = self.method_name(method)
        t = time.perf_counter()
        out = self.explain(item.prepared.image[None], methods=[name], target=target)
        timings["model_ms"] = (time.perf_counter() - t) * 1000
        t = time.perf_counter()
        result = self.explanation_of(item, out, 0, name, target, overlay_alpha=overlay_alpha,
                                     overlay_size=overlay_size)
        timings["render_ms"] = (time.perf_counter() - t) * 1000
        timings["total_ms"] = (time.perf_counter() - start) * 1000
        result["timings_ms"] = {k: round(v, 2) for k, v in timings.items()}
        return result


@dataclass
class PhotoInput:
    """One photograph read and preprocessed for a predictor (`Predictor.prepare_photo`)."""

    prepared: "Prepared"
    """The network input (`.image`, (S, S, 3) uint8) and the crop geometry in original pixels."""
    photo: "Photo"
    """The decoded photograph the overlay is drawn on."""
    preprocess_ms: float

    @property
    def geometry(self) -> "Geometry":
        """The crop box and field of view its map is scored in, as the decode step gives them for a file."""
        from drray.data.geometry import Geometry

        return Geometry.of(self.prepared, self.photo.shape)


def explain_image(image: "str | os.PathLike | bytes | np.ndarray", model_dir: str | os.PathLike,
                  method: str | None = None, target: Any = "pred", **kwargs: Any) -> dict[str, Any]:
    """One photograph, end to end, with the model in `model_dir` (see `Predictor.explain_image`).

    method: a CAM method; None: the one chosen for the model (its card's), else gradcam.
    Loads the model on each call: keep a `Predictor` for many images.
    """
    predictor = Predictor.from_model_dir(model_dir, methods=None if method is None else [method], target=target)
    try:
        return predictor.explain_image(image, method=method, **kwargs)
    finally:
        predictor.close()
