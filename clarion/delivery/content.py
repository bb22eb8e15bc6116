"""From a send's stored content to the provider-neutral Notification, per language."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import orjson

from clarion.delivery.models import Send
from clarion.delivery.personalisation import (
    PERSONALISED_FIELDS,
    TemplateLimitError,
    is_template,
    render,
)
from clarion.delivery.providers import apns, fcm, webpush
from clarion.delivery.providers.base import Media, Notification, Priority, PushType

# Each platform's payload as the provider builds it, and the most its service accepts (bytes).
_PAYLOAD_SIZES: dict[str, tuple[Callable[[Notification], int], int]] = {
    "ios": (lambda n: len(apns.build_payload(n)), apns.MAX_PAYLOAD),
    "android": (lambda n: fcm.data_size(fcm.build_data(n)), fcm.MAX_DATA),
    "web": (lambda n: len(webpush.build_payload(n)), webpush.MAX_PLAINTEXT),
}
# A send token as it rides in every payload (`com.batch.i`): a UUID.
_SEND_TOKEN_SAMPLE = "00000000-0000-0000-0000-000000000000"


def _language(language: str | None) -> str:
    return (language or "").split("-")[0].split("_")[0].lower()


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
    return _by_language(messages, language)


def _by_language(texts: dict[str, dict[str, Any]], language: str | None) -> dict[str, Any]:
    lang = _language(language)
    return texts.get(lang) or texts.get("default") or next(iter(texts.values()))


def pick_landing(content: dict[str, Any], language: str | None) -> dict[str, Any] | None:
    """A send's landing (Batch's `com.batch.ld`) for a device's language, with the fallback of
    the messages: exact match, then "default", then the first content. The send holds it with
    its theme already resolved (clarion.campaigns.service.landing_content)."""
    landing: dict[str, Any] | None = content.get("landing")
    if not landing:
        return None
    chosen = _by_language(landing["contents"], language)
    return {key: value for key, value in landing.items() if key != "contents"} | chosen


def language_key(content: dict[str, Any], language: str | None) -> str:
    """Devices with the same key receive byte-identical payloads (rendered once per batch)."""
    lang = _language(language)
    key = ""
    messages = content.get("messages")
    if messages:
        key = lang if lang in messages else "default"
    landing = content.get("landing")
    if landing:
        # The landing's languages need not be the messages'.
        key += "/" + (lang if lang in landing["contents"] else "default")
    return key


def largest_payload(content: dict[str, Any], platform: str) -> tuple[int, int, str]:
    """The largest payload a send of this content makes on `platform`, over every language a
    device may get (each language of the messages and of the landing, and the fallback):
    (its size, the platform's limit, its language). Templates count as written."""
    measure, limit = _PAYLOAD_SIZES[platform]
    languages = {
        *(content.get("messages") or {}),
        *((content.get("landing") or {}).get("contents") or {}),
    }
    largest = (0, limit, "")
    for language in ["", *sorted(languages)]:
        size = measure(
            _notification(content, language, send_id=_SEND_TOKEN_SAMPLE, expires_at=None)
        )
        largest = max(largest, (size, limit, language))
    return largest


def has_templates(content: dict[str, Any]) -> bool:
    """Whether a send's texts use templates (its content is then marked `personalised`)."""
    messages = [content["message"]] if "message" in content else []
    messages += list((content.get("messages") or {}).values())
    return is_template(content.get("deeplink")) or any(
        is_template(message.get(name)) for message in messages for name in ("title", "body")
    )


def personalised_fields(
    content: dict[str, Any],
    language: str | None,
    attributes: Mapping[str, Any],
    event: Mapping[str, Any] | None = None,
) -> tuple[str | None, ...]:
    """A personalised send's title, body and deeplink as rendered for one user (`event`: the
    one that triggered an automation's push to them).
    TemplateLimitError (naming the field): a template goes beyond a limit for this user."""
    message = pick_message(content, language) or {}
    rendered: list[str | None] = []
    for name in PERSONALISED_FIELDS:
        text = message.get(name) if name != "deeplink" else content.get(name)
        try:
            rendered.append(render(text, attributes, event))
        except TemplateLimitError as exc:
            raise TemplateLimitError(f"{name}: {exc.message}") from None
    return tuple(rendered)


def build_notification(
    send: Send, language: str | None, rendered: tuple[str | None, ...] | None = None
) -> Notification:
    """`rendered`: the personalised fields (personalised_fields) for the devices at hand."""
    return _notification(
        send.content, language, send_id=send.token, expires_at=send.expires_at, rendered=rendered
    )


def _notification(
    content: dict[str, Any],
    language: str | None,
    *,
    send_id: str,
    expires_at: datetime | None,
    rendered: tuple[str | None, ...] | None = None,
) -> Notification:
    message = pick_message(content, language) or {}
    if rendered is not None:
        texts = dict(zip(PERSONALISED_FIELDS, rendered, strict=True))
        message = {**message, "title": texts["title"], "body": texts["body"]}
        content = {**content, "deeplink": texts["deeplink"]}
    media = content.get("media")
    collapse = content.get("gcm_collapse_key") or {}
    custom = content.get("custom_payload")
    return Notification(
        send_id=send_id,
        title=message.get("title"),
        body=message.get("body"),
        deeplink=content.get("deeplink"),
        custom_payload=orjson.loads(custom) if custom else {},
        media=Media(**media) if media else None,
        priority=Priority(content["priority"]) if content.get("priority") else None,
        push_type=PushType(content.get("push_type", "alert")),
        expires_at=expires_at,
        collapse_key=collapse.get("key") if collapse.get("enabled") else None,
        landing=pick_landing(content, language),
    )
