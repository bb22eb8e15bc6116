"""Errors raised by services, each carrying Batch's HTTP status and numeric code (spec §2).

Services raise these; one handler in clarion.http renders `{"code": N, "message": "..."}`.
The symbolic name leads the message, which every Batch client seen tolerates (spec §2.1).
"""

from __future__ import annotations


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


class MaintenanceError(ClarionError):
    status, code, name = 503, 2, "MAINTENANCE_ERROR"
