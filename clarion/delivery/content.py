"""From a send's stored content to the provider-neutral Notification, per language."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from clarion.delivery.models import Send
from clarion.delivery.personalisation import (
    PERSONALISED_FIELDS,
    TemplateLimitError,
    is_template,
    render,
)
from clarion.delivery.providers.base import Media, Notification, Priority, PushType


def pick_message(content: dict[str, Any], language: str | None) -> dict[str, Any] | None:
    """The message for a device's language: exact match, then "default", then the first one.

    A device with an unknown language still gets a message rather than nothing; the order of
    `messages` in the request decides which one when no "default" is given.
    """
    if "message" in content:
        message: dict[str, Any] = content["message"]
        return message
    messages: dict[str, dict[str, Any]] | None = content.get("messages")
    if not messages:
        return None
    lang = (language or "").split("-")[0].split("_")[0].lower()
    return messages.get(lang) or messages.get("default") or next(iter(messages.values()))


def language_key(content: dict[str, Any], language: str | None) -> str:
    """Devices with the same key receive byte-identical payloads (rendered once per batch)."""
    messages = content.get("messages")
    if not messages:
        return ""
    lang = (language or "").split("-")[0].split("_")[0].lower()
    return lang if lang in messages else "default"


def has_templates(content: dict[str, Any]) -> bool:
    """Whether a send's texts use templates (its content is then marked `personalised`)."""
    messages = [content["message"]] if "message" in content else []
    messages += list((content.get("messages") or {}).values())
    return is_template(content.get("deeplink")) or any(
        is_template(message.get(name)) for message in messages for name in ("title", "body")
    )


def personalised_fields(
    content: dict[str, Any], language: str | None, attributes: Mapping[str, Any]
) -> tuple[str | None, ...]:
    """A personalised send's title, body and deeplink as rendered for one user.
    TemplateLimitError (naming the field): a template goes beyond a limit for this user."""
    message = pick_message(content, language) or {}
    rendered: list[str | None] = []
    for name in PERSONALISED_FIELDS:
        try:
            rendered.append(
                render(message.get(name) if name != "deeplink" else content.get(name), attributes)
            )
        except TemplateLimitError as exc:
            raise TemplateLimitError(f"{name}: {exc.message}") from None
    return tuple(rendered)


def build_notification(
    send: Send, language: str | None, rendered: tuple[str | None, ...] | None = None
) -> Notification:
    """`rendered`: the personalised fields (personalised_fields) for the devices at hand."""
    content = send.content
    message = pick_message(content, language) or {}
    if rendered is not None:
        texts = dict(zip(PERSONALISED_FIELDS, rendered, strict=True))
        message = {**message, "title": texts["title"], "body": texts["body"]}
        content = {**content, "deeplink": texts["deeplink"]}
    media = content.get("media")
    collapse = content.get("gcm_collapse_key") or {}
    custom = content.get("custom_payload")
    return Notification(
        send_id=send.token,
        title=message.get("title"),
        body=message.get("body"),
        deeplink=content.get("deeplink"),
        custom_payload=orjson.loads(custom) if custom else {},
        media=Media(**media) if media else None,
        priority=Priority(content["priority"]) if content.get("priority") else None,
        push_type=PushType(content.get("push_type", "alert")),
        expires_at=send.expires_at,
        collapse_key=collapse.get("key") if collapse.get("enabled") else None,
    )
