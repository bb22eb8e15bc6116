"""The Web SDK's scripts as Clarion serves them (docs/web-sdk.md, "Serving and allowed origins").

Read once when the process starts, with their headers computed then: a script is fetched by
every page view of every site that embeds it, so a request costs a dictionary lookup, never a
disk read. Two paths per script:

- the stable `v1` path (`clarion.js`), what a site's tag names: cached an hour, then revalidated
  with its strong ETag (a 304 of no body), so a Clarion upgrade reaches every site within an
  hour without any site changing its page;
- the content-hashed path (`clarion.<hash>.js`), for a site that pins a build (for instance
  with Subresource Integrity): its bytes never change, so it is cached a year as `immutable`.
  It exists as long as this build is served: after an upgrade, the previous hash is a 404.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

SCRIPTS_DIR = Path(__file__).parent / "web"
SCRIPT_NAMES = ("clarion.js", "clarion-sw.js")
# 64 bits of SHA-256: a collision between two builds is not a concern at any release rate.
HASH_LENGTH = 16
_STABLE_CACHE = "public, max-age=3600"
_PINNED_CACHE = "public, max-age=31536000, immutable"


@dataclass(frozen=True, slots=True)
class Script:
    body: bytes
    etag: str  # with its quotes, as sent
    headers: dict[str, str]  # every header of a 200 or 304 of this path but Content-Length


def _headers(etag: str, cache_control: str, service_worker: bool) -> dict[str, str]:
    headers = {
        "Content-Type": "text/javascript; charset=utf-8",
        "Cache-Control": cache_control,
        "ETag": etag,
        "X-Content-Type-Options": "nosniff",
        # Public scripts: a page may load them with `crossorigin` (needed for Subresource
        # Integrity), and a site isolated with COEP `require-corp` may embed them.
        "Access-Control-Allow-Origin": "*",
        "Cross-Origin-Resource-Policy": "cross-origin",
    }
    if service_worker:
        # Lets a site register a worker whose script path is under another folder with the
        # scope "/" (the worker itself is the site's own one-line importScripts file).
        headers["Service-Worker-Allowed"] = "/"
    return headers


def load_scripts(directory: Path = SCRIPTS_DIR) -> dict[str, Script]:
    """Every path served, by file name: the stable name and the hashed one of each script."""
    served: dict[str, Script] = {}
    for name in SCRIPT_NAMES:
        body = (directory / name).read_bytes()
        digest = hashlib.sha256(body).hexdigest()[:HASH_LENGTH]
        etag = f'"{digest}"'
        stem = name.removesuffix(".js")
        worker = name == "clarion-sw.js"
        served[name] = Script(body, etag, _headers(etag, _STABLE_CACHE, worker))
        served[f"{stem}.{digest}.js"] = Script(body, etag, _headers(etag, _PINNED_CACHE, worker))
    return served


def not_modified(etag: str, if_none_match: str | None) -> bool:
    """RFC 9110 §13.1.2: If-None-Match compares weakly (`W/"x"` names "x"), `*` names any."""
    if if_none_match is None:
        return False
    for tag in if_none_match.split(","):
        tag = tag.strip()
        if tag == "*" or tag.removeprefix("W/") == etag:
            return True
    return False
