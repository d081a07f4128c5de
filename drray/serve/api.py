"""The REST API: POST /api/v1/explain, GET /api/v1/model, GET /healthz, and FastAPI's OpenAPI schema.

    curl -F image=@eye.jpg -F method=gradcam http://127.0.0.1:8000/api/v1/explain
    curl -H 'content-type: application/json' -d '{"image_base64": "..."}' http://127.0.0.1:8000/api/v1/explain

Every refusal is a JSON `Error` (`detail`, `reason`) with a 4xx status: 413 for a body or image
above the limits, 415 for a body that is neither multipart nor JSON, 422 for a file that is not
a usable image and for unknown options (naming the valid ones).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from drray.serve.limits import BodySizeLimit, BodyTooLarge
from drray.serve.refusals import TARGETS, Refusal, ReasonCode
from drray.serve.schemas import Error, ExplainJSON, ExplainOptions, Explanation, Health, ModelInfo
from drray.storage import json_ready

log = logging.getLogger(__name__)

API_PREFIX = "/api/v1"
UI_PATH = "/ui"
MB = 2**20
_ERRORS = {status: {"model": Error} for status in (400, 413, 415, 422, 500, 503)}


def max_body_bytes(args: Any) -> int:
    return int(args.max_body_mb * MB)


def _multipart_schema() -> dict[str, Any]:
    return {"type": "object", "required": ["image"], "additionalProperties": False, "properties": {
        "image": {"type": "string", "format": "binary", "description": "The photograph (JPEG, PNG, TIFF, ...)."},
        "method": {"type": "string", "maxLength": 64, "description": ExplainOptions.model_fields["method"].description},
        "target": {"type": "string", "enum": list(TARGETS), "description": ExplainOptions.model_fields["target"].description},
        "ben_graham": {"type": "boolean", "description": ExplainOptions.model_fields["ben_graham"].description},
        "overlay_alpha": {"type": "number", "minimum": 0, "maximum": 1,
                          "description": ExplainOptions.model_fields["overlay_alpha"].description},
        "overlay_size": {"type": "integer", "minimum": 32, "maximum": 1024,
                         "description": ExplainOptions.model_fields["overlay_size"].description},
    }}


def error(status: int, reason: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail, "reason": reason}, status_code=status, headers=headers)


def _validation_detail(e: ValidationError | RequestValidationError) -> str:
    parts = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
        parts.append(f"{loc}: {err.get('msg')}" if loc else str(err.get("msg")))
    return "; ".join(parts) or "invalid request"


def to_response(result: dict[str, Any]) -> dict[str, Any]:
    """An Explainer result as the JSON `Explanation`: PNGs in base64, arrays dropped, floats finite."""
    body = {k: v for k, v in result.items() if k in Explanation.model_fields}
    for key in ("cam_png", "overlay_png"):
        body[key] = base64.b64encode(result[key]).decode("ascii")
    body["target"] = str(result["target"])
    return json_ready(body)


async def _read_request(request: Request, max_fields: int = 8) -> tuple[bytes, ExplainOptions] | JSONResponse:
    """(image bytes, options) from a multipart or JSON body, or the error answer."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        try:
            form = await request.form(max_files=1, max_fields=max_fields)
        except BodyTooLarge:
            raise
        except StarletteHTTPException as e:  # malformed multipart, too many parts
            return error(400, ReasonCode.INVALID_REQUEST, f"multipart body: {e.detail}")
        image = form.get("image")
        if not isinstance(image, UploadFile):
            return error(422, ReasonCode.INVALID_REQUEST,
                         "multipart field `image` must be a file (e.g. curl -F image=@eye.jpg ...)")
        fields: dict[str, Any] = {}
        for key, value in form.multi_items():
            if key == "image":
                continue
            if not isinstance(value, str):
                return error(422, ReasonCode.INVALID_REQUEST, f"multipart field {key!r} must be text, not a file")
            if value != "":
                fields[key] = value
        try:
            options = ExplainOptions.model_validate(fields)
        except ValidationError as e:
            return error(422, ReasonCode.INVALID_REQUEST, _validation_detail(e))
        return await image.read(), options
    if ctype == "application/json" or ctype.endswith("+json"):
        raw = await request.body()
        try:
            obj = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            return error(400, ReasonCode.INVALID_REQUEST, f"the JSON body does not parse: {e}")
        if not isinstance(obj, dict):
            return error(422, ReasonCode.INVALID_REQUEST,
                         f"the JSON body must be an object with `image_base64`, got {type(obj).__name__}")
        try:
            body = ExplainJSON.model_validate(obj)
        except ValidationError as e:
            return error(422, ReasonCode.INVALID_REQUEST, _validation_detail(e))
        text = body.image_base64
        if text.startswith("data:") and "," in text:
            text = text.split(",", 1)[1]
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as e:
            return error(422, ReasonCode.BAD_BASE64, f"image_base64 is not valid base64: {e}")
        return data, ExplainOptions.model_validate(body.model_dump(exclude={"image_base64"}))
    return error(415, ReasonCode.UNSUPPORTED_MEDIA_TYPE,
                 f"content type {ctype or 'none'!r} is not accepted; send multipart/form-data with a file field "
                 "`image`, or application/json with `image_base64`")


def make_api(client: Any, args: Any) -> FastAPI:
    """The FastAPI app over an Explainer client (`drray.serve.deployments.HandleClient`: explain, describe, ping)."""
    app = FastAPI(title="drray", version=_version(),
                  description="Diabetic-retinopathy grading (ICDR 0-4) with class activation maps. "
                              f"The page for people is at {UI_PATH}/.")
    app.state.client = client
    limit = max_body_bytes(args)
    app.add_middleware(BodySizeLimit, max_bytes=limit)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        return error(422, ReasonCode.INVALID_REQUEST, _validation_detail(e))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, e: StarletteHTTPException) -> JSONResponse:
        reason = getattr(e, "reason", None) or f"http_{e.status_code}"
        return error(e.status_code, reason, str(e.detail), headers=getattr(e, "headers", None))

    @app.post(f"{API_PREFIX}/explain", response_model=Explanation, responses=_ERRORS, tags=["explain"],
              summary="Grade one fundus photograph and show where the model looked",
              openapi_extra={"requestBody": {"required": True, "content": {
                  "multipart/form-data": {"schema": _multipart_schema()},
                  "application/json": {"schema": ExplainJSON.model_json_schema()},
              }}})
    async def explain(request: Request):
        parsed = await _read_request(request)
        if isinstance(parsed, JSONResponse):
            return parsed
        data, options = parsed
        try:
            answer = await client.explain(data, method=options.method, target=options.target,
                                          ben_graham=options.ben_graham, overlay_alpha=options.overlay_alpha,
                                          overlay_size=options.overlay_size)
        except Exception as e:  # the Explainer failed: say so in JSON, keep serving
            log.exception("explaining an uploaded image failed")
            return error(500, "explain_failed", f"explaining the image failed: {type(e).__name__}: {e}")
        if isinstance(answer, Refusal):
            return JSONResponse(answer.body(), status_code=answer.status)
        return JSONResponse(to_response(answer))

    @app.get(f"{API_PREFIX}/model", response_model=ModelInfo, responses={503: {"model": Error}}, tags=["model"],
             summary="The model this server runs: backbone, head, input size, metrics, target layer, grades")
    async def model():
        try:
            info = await client.describe()
        except Exception as e:
            return error(503, ReasonCode.EXPLAINER_UNAVAILABLE, f"the Explainer did not answer: {type(e).__name__}: {e}")
        return JSONResponse(json_ready({**{k: info.get(k) for k in ModelInfo.model_fields}, "targets": list(TARGETS),
                                     "max_body_bytes": limit, "max_image_pixels": args.max_image_pixels}))

    @app.get("/healthz", response_model=Health, responses={503: {"model": Health}}, tags=["health"],
             summary="200 while the Explainer answers, 503 otherwise")
    async def healthz():
        try:
            model_id = await client.ping()
        except Exception as e:
            log.warning("health check: the Explainer did not answer: %s", e)
            return JSONResponse({"status": "unavailable", "model_id": None}, status_code=503)
        return {"status": "ok", "model_id": model_id}

    @app.get("/", include_in_schema=False)
    async def root():
        return RedirectResponse(f"{UI_PATH}/")

    return app


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("drray")
    except Exception:
        return "0"
