"""Small HTTP vocabulary shared by the simulated services: replies, header access, base64url.

See docs/simulators.md.
"""

import base64
import binascii
from collections.abc import Iterable
from typing import Any, NamedTuple, Protocol

import orjson


class Headers(Protocol):
    """What the handlers need from request headers; granian's RSGIHeaders and a dict both fit."""

    def get(self, key: str, default: Any = None) -> Any: ...

    def items(self) -> Iterable[tuple[str, str]]: ...


class Reply(NamedTuple):
    status: int
    headers: list[tuple[str, str]]
    body: bytes


JSON_TYPE = ("content-type", "application/json")


def json_reply(status: int, document: object, *extra: tuple[str, str]) -> Reply:
    return Reply(status, [JSON_TYPE, *extra], orjson.dumps(document))


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Decode base64url with or without padding; raises ValueError on garbage."""
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise ValueError(str(exc)) from exc


def decode_payload(body: bytes) -> object:
    """Messages are stored as raw bytes and only parsed when a test reads them back."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return body.decode("utf-8", "replace")
