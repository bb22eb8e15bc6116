"""Personalised pushes: title, body and deeplink may use the user's custom attributes.

The template language is Jinja2 in its sandbox (docs/decisions/0009-personalisation.md):
`Hello {{ c.firstname | default("there") }}`. `c` holds the attributes of the installation's
custom user id (Custom Data API, without the `u.` prefix). A missing attribute renders as its
default, or as nothing; no template error ever stops a send.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from jinja2 import ChainableUndefined, Template, TemplateSyntaxError
from jinja2.sandbox import SandboxedEnvironment

# The message fields that may be templates.
PERSONALISED_FIELDS = ("title", "body", "deeplink")

_ENV = SandboxedEnvironment(undefined=ChainableUndefined, autoescape=False)
_MARKERS = ("{{", "{%", "{#")


def is_template(text: str | None) -> bool:
    return text is not None and any(marker in text for marker in _MARKERS)


def check_template(text: str) -> str:
    """Refuse (ValueError) text that would not compile, at the API, rather than at send time."""
    if is_template(text):
        try:
            _compiled(text)
        except TemplateSyntaxError as exc:
            raise ValueError(f"template error on line {exc.lineno}: {exc.message}") from None
    return text


def render(text: str | None, attributes: Mapping[str, Any]) -> str | None:
    """`text` rendered for one user. If it fails on this user's values (a filter given the
    wrong type, say), it is rendered as for a user with no attributes: the defaults."""
    if text is None or not is_template(text):
        return text
    template = _compiled(text)
    try:
        return template.render(c=attributes)
    except Exception:
        try:
            return template.render(c={})
        except Exception:
            return ""


@lru_cache(maxsize=512)
def _compiled(text: str) -> Template:
    return _ENV.from_string(text)
