"""Errors raised by services, each carrying Batch's HTTP status and numeric code (spec §2).

Services raise these; one handler in clarion.http renders `{"code": N, "message": "..."}`.
The symbolic name leads the message, which every Batch client seen tolerates (spec §2.1).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class ClarionError(Exception):
    status: int = 500
    code: int = 1  # SERVER_ERROR: clients map "500-1" (spec §2.2)
    name: str = "SERVER_ERROR"

    def __init__(self, detail: str = "") -> None:
        super().__init__(detail)
        self.detail = detail

    @property
    def message(self) -> str:
        return f"{self.name}: {self.detail}" if self.detail else self.name


class AuthenticationInvalidError(ClarionError):
    status, code, name = 401, 10, "AUTHENTICATION_INVALID"


class ApiMisuseError(ClarionError):
    status, code, name = 403, 12, "API_MISUSE"


class NotFoundError(ClarionError):
    status, code, name = 404, 20, "ROUTE_NOT_FOUND"


class MissingParameterError(ClarionError):
    status, code, name = 400, 30, "MISSING_PARAMETER"


class MalformedParameterError(ClarionError):
    status, code, name = 400, 31, "MALFORMED_PARAMETER"


class MalformedJsonError(ClarionError):
    status, code, name = 400, 32, "MALFORMED_JSON_BODY"


class TooManyRequestsError(ClarionError):
    status, code, name = 429, 60, "TOO_MANY_REQUESTS"


# Raised nowhere today (Clarion has no maintenance mode), kept because spec §2.2 defines 503/2
# and lists it on every write route: this module is the whole table of codes Batch's clients map.
class MaintenanceError(ClarionError):
    status, code, name = 503, 2, "MAINTENANCE_ERROR"


def _field_path(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in (loc[1:] if loc[:1] == ("body",) else loc)]
    return ".".join(parts) if parts else "body"


def from_validation_errors(errors: Sequence[Any]) -> ClarionError:
    """Pydantic's first error as Batch's codes: 32 bad JSON, 30 missing, 31 malformed.

    Shared by request validation (clarion.http) and services that validate a merged document
    themselves (a campaign update is validated once merged with what was stored)."""
    if not errors:
        return MalformedParameterError("invalid request")
    first = errors[0]
    kind = first.get("type", "")
    path = _field_path(tuple(first.get("loc", ())))
    if kind == "json_invalid":
        return MalformedJsonError("the body is not valid JSON")
    if kind == "missing":
        return MissingParameterError(f"{path} is required")
    if kind == "missing_field":
        return MissingParameterError(f"{first.get('ctx', {}).get('field', path)} is required")
    if kind in ("model_attributes_type", "dict_type") and path == "body":
        return MalformedJsonError("the body must be a JSON object")
    if kind in ("too_long", "too_short") and isinstance(first.get("input"), str):
        # A string whose type also has a validator: pydantic counts "items after validation".
        ctx = first.get("ctx", {})
        bound, limit = (
            ("at most", "max_length") if kind == "too_long" else ("at least", "min_length")
        )
        count = ctx.get(limit)
        noun = "character" if count == 1 else "characters"
        return MalformedParameterError(f"{path}: {bound} {count} {noun}")
    message = str(first.get("msg", "is invalid")).removeprefix("Value error, ")
    return MalformedParameterError(f"{path}: {message}")
