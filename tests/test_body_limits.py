"""Body-size limits hold for bodies sent without a Content-Length (chunked), on JSON routes."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from tests.conftest import ClientApp
from tests.test_campaigns import error

LIMIT = 1024 * 1024  # CLARION_MAX_BODY_BYTES's default: Batch's 1 MiB


async def chunked(size: int) -> AsyncIterator[bytes]:
    """A JSON body of `size` bytes, in 64 KiB chunks: httpx sends no Content-Length."""
    yield b'{"group_id": "'
    chunk = b"a" * 65536
    for _ in range(size // len(chunk)):
        yield chunk
    yield b'"}'


@pytest.mark.parametrize("content_type", ["application/json", None])
async def test_a_chunked_body_over_the_limit_is_refused_as_too_large(
    content_type: str | None, api: httpx.AsyncClient, ios_app: ClientApp
) -> None:
    headers = ios_app.headers()
    if content_type is not None:
        headers["Content-Type"] = content_type
    response = await api.post(
        f"/1.1/{ios_app.api_key}/transactional/send",
        headers=headers,
        content=chunked(2 * LIMIT),
    )
    assert "content-length" not in response.request.headers
    assert error(response, 400, 31) == "MALFORMED_PARAMETER: body: larger than 1024 KiB"
