"""Request and response models of the REST API: what FastAPI's OpenAPI schema (/openapi.json) publishes."""

from __future__ import annotations

from typing import Any, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

from drray.schema import NUM_GRADES
from drray.serve.refusals import TARGETS


class ExplainOptions(BaseModel):
    """Options of POST /api/v1/explain (multipart form fields, or JSON keys beside `image_base64`)."""

    model_config = ConfigDict(extra="forbid")

    method: Optional[str] = Field(None, max_length=64, description=(
        "CAM method; default the server's first. GET /api/v1/model lists those served (`methods`)."))
    target: Union[str, int] = Field("pred", description=(
        f"What the map explains: one of {', '.join(TARGETS)} (a number is a grade 0-{NUM_GRADES - 1})."))
    ben_graham: Optional[bool] = Field(None, description=(
        "Override the model's Ben Graham normalisation; null keeps what it was trained with."))
    overlay_alpha: float = Field(0.4, ge=0.0, le=1.0, description="Opacity of the map in `overlay_png`.")
    overlay_size: Optional[int] = Field(None, ge=32, le=1024, description=(
        "Side of `overlay_png` in pixels; null: the fundus at up to 512 px (smaller answers travel faster)."))


class ExplainJSON(ExplainOptions):
    """JSON body of POST /api/v1/explain."""

    image_base64: str = Field(..., description="The photograph (JPEG, PNG, TIFF, ...) in base64; "
                                               "a `data:image/...;base64,` prefix is allowed.")


class Explanation(BaseModel):
    """The grade of one photograph and where the model looked."""

    grade: int = Field(..., ge=0, le=NUM_GRADES - 1, description="Predicted ICDR grade 0-4.")
    grade_name: str
    probs: list[float] = Field(..., min_length=NUM_GRADES, max_length=NUM_GRADES,
                               description="P(grade) for grades 0-4, summing to 1.")
    referable_prob: float = Field(..., description="P(grade >= 2): moderate NPDR or worse.")
    referable: bool = Field(..., description="referable_prob at or above the threshold (0.5).")
    cam_png: str = Field(..., description="The map (jet colours, network input grid) as a base64 PNG.")
    overlay_png: str = Field(..., description="The map over the colour photograph, cropped to the fundus, base64 PNG.")
    peak_y: Optional[float] = Field(None, description="Peak of the map, 0-1 of the photograph's height (null: flat map).")
    peak_x: Optional[float] = Field(None, description="Peak of the map, 0-1 of the photograph's width.")
    cam_entropy: Optional[float] = None
    quality_ok: bool = Field(..., description="False: no fundus was found; see warnings.")
    warnings: list[str]
    timings_ms: dict[str, float]
    model_id: str
    method: str
    target: str
    target_class: Optional[int] = Field(None, description="The grade the map explains; null for a score target.")
    target_layer: str
    image_size: list[int] = Field(..., description="[width, height] of the photograph as stored.")
    batch_size: int = Field(1, description="Requests explained together in this one forward pass.")


class ModelInfo(BaseModel):
    """What model this server runs: GET /api/v1/model."""

    model_config = ConfigDict(protected_namespaces=())

    model_id: str
    backbone: str
    head: str
    input_size: int
    preprocess: dict[str, Any]
    metrics: dict[str, Any]
    target_layer: str
    target_stride: Optional[int] = None
    methods: list[str]
    targets: list[str]
    grades: dict[str, str]
    created: Optional[str] = None
    drray_version: Optional[str] = None
    device: str
    max_batch_size: int
    batch_wait_timeout_s: float
    max_body_bytes: int
    max_image_pixels: int


class Health(BaseModel):
    status: str = Field(..., description="`ok`, or `unavailable` with HTTP 503.")
    model_id: Optional[str] = None


class Error(BaseModel):
    """Every 4xx/5xx answer of the API."""

    detail: str = Field(..., description="What was wrong, with which input, and what to do.")
    reason: str = Field(..., description="A stable code: not_an_image, corrupt_image, image_too_large, "
                                         "body_too_large, unknown_method, unknown_target, invalid_request, ...")
