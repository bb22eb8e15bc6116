"""Personalised pushes: title, body and deeplink may use the user's custom attributes.

The template language is Jinja2 in its sandbox (docs/decisions/0009-personalisation.md):
`Hello {{ c.firstname | default("there") }}`. `c` holds the attributes of the installation's
custom user id (Custom Data API, without the `u.` prefix). A missing attribute renders as its
default, or as nothing; no template error ever stops a send.

Templates come from API callers and run on the delivery loop, so beyond the sandbox's own
guards: no globals (no `range`, no `lipsum`), no repetition of strings or lists with `*`, no
big powers, and the output is cut at MAX_OUTPUT characters.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from jinja2 import ChainableUndefined, Template, TemplateError
from jinja2.exceptions import SecurityError
from jinja2.sandbox import SandboxedEnvironment

# The message fields that may be templates.
PERSONALISED_FIELDS = ("title", "body", "deeplink")
MAX_OUTPUT = 4096  # a push body's limit

_MARKERS = ("{{", "{%", "{#")


class _PushTemplates(SandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Any, operator_name: str, left: Any, right: Any) -> Any:
        if operator_name == "*":
            if not (isinstance(left, int | float) and isinstance(right, int | float)):
                raise SecurityError("only numbers can be multiplied in a push template")
            return operator.mul(left, right)
        if isinstance(right, int | float) and abs(right) > 64:
            raise SecurityError("exponent too large in a push template")
        return operator.pow(left, right)


_ENV = _PushTemplates(undefined=ChainableUndefined, autoescape=False)
_ENV.globals.clear()


def is_template(text: str | None) -> bool:
    return text is not None and any(marker in text for marker in _MARKERS)


def check_template(text: str) -> str:
    """Refuse (ValueError) at the API a template that does not compile, or that fails for a
    user with no attributes (whose push shows the defaults): give it a default instead."""
    if is_template(text):
        try:
            _compiled(text).render(c={})
        except TemplateError as exc:
            raise ValueError(f"template error: {exc.message}") from None
        except Exception as exc:
            raise ValueError(f"template fails for a user with no attributes: {exc}") from None
    return text


def render(text: str | None, attributes: Mapping[str, Any]) -> str | None:
    """`text` rendered for one user. If it fails on this user's values (a filter given the
    wrong type, say), it is rendered as for a user with no attributes: the defaults."""
    if text is None or not is_template(text):
        return text
    for values in (attributes, {}):
        try:
            return _compiled(text).render(c=values)[:MAX_OUTPUT]
        except Exception:
            continue
    return ""


@lru_cache(maxsize=512)
def _compiled(text: str) -> Template:
    return _ENV.from_string(text)
