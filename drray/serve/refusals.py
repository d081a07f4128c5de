"""Why a request is refused: one HTTP status, a stable reason code and a sentence, for the API and the page alike.

The Explainer returns a `Refusal` (a value, not an exception, so it crosses Ray's handles as it
is) for a bad image or a bad option; the ingress turns it into a JSON answer with that status.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from drray.schema import NUM_GRADES, Reason

TARGETS = ("pred", "referable", "score", *(str(g) for g in range(NUM_GRADES)))
"""What a map may explain: the predicted grade's score, P(grade >= 2), the severity score, or one grade."""


class ReasonCode:
    """Reason codes of refusals that are not about an image file (those come from drray.schema.Reason)."""

    UNKNOWN_METHOD = "unknown_method"
    UNKNOWN_TARGET = "unknown_target"
    INVALID_REQUEST = "invalid_request"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    BODY_TOO_LARGE = "body_too_large"
    BAD_BASE64 = "bad_base64"
    EXPLAINER_UNAVAILABLE = "explainer_unavailable"


# Image problems are the client's: 413 where the size is the problem, 422 where the content is.
_IMAGE_STATUS = {Reason.IMAGE_TOO_LARGE: 413}


@dataclass(frozen=True)
class Refusal:
    """A request the server will not explain, and why."""

    status: int
    reason: str
    detail: str

    def body(self) -> dict[str, str]:
        return {"detail": self.detail, "reason": self.reason}


def from_image_error(error: Any) -> Refusal:
    """A `drray.data.images.ImageError` as a refusal (its reason code kept)."""
    return Refusal(_IMAGE_STATUS.get(error.reason, 422), error.reason, str(error.detail))


def check_method(method: str | None, offered: Sequence[str]) -> str:
    """The canonical name of `method` among the served methods (`offered`, the first being the default).

    Raises `RefusalError` (422) naming the methods this server offers.
    """
    from drray.cam.methods import get_method

    if method is None or method == "":
        return offered[0]
    try:
        name = get_method(method).name
    except ValueError:
        name = None
    if name not in offered:
        raise RefusalError(Refusal(422, ReasonCode.UNKNOWN_METHOD,
                                   f"unknown CAM method {method!r}; this server offers: {', '.join(offered)}"))
    return name


def check_target(target: Any) -> str:
    """`target` as one of TARGETS; raises `RefusalError` (422) listing them."""
    key = str(target).strip().lower() if isinstance(target, (str, int)) and not isinstance(target, bool) else None
    if key not in TARGETS:
        raise RefusalError(Refusal(422, ReasonCode.UNKNOWN_TARGET,
                                   f"unknown CAM target {target!r}; use one of: {', '.join(TARGETS)} "
                                   f"(a number is a grade 0-{NUM_GRADES - 1})"))
    return key


class RefusalError(Exception):
    """Raised inside the server where a `Refusal` is found; caught and answered, never a 500."""

    def __init__(self, refusal: Refusal):
        super().__init__(refusal.detail)
        self.refusal = refusal
