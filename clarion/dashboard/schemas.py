"""The dashboard's forms, read into the same shapes the APIs take, so that the same rules give
the same messages (a campaign form becomes a Campaigns API document, see `campaign_document`)."""

from __future__ import annotations

import re
from typing import Any, Literal, Protocol

import orjson
from pydantic import Field, SecretStr, field_validator

from clarion.dashboard.models import Role
from clarion.errors import MalformedParameterError
from clarion.formats import WireModel

_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")


class UserCreate(WireModel):
    email: str = Field(max_length=254)
    name: str = Field(default="", max_length=200)
    # Length is what makes a password strong; no composition rules (NIST SP 800-63B §5.1.1).
    password: SecretStr = Field(min_length=10, max_length=1024)
    role: Role = Role.VIEWER

    @field_validator("email")
    @classmethod
    def _email(cls, value: str) -> str:
        value = value.strip()
        if not _EMAIL.fullmatch(value):
            raise ValueError(f"{value!r} is not an e-mail address")
        return value.lower()


class UserChange(WireModel):
    """What an admin may change of another team member: the role, and whether they can sign in."""

    role: Role
    status: Literal["active", "disabled"]


class FormFields(Protocol):
    """A submitted form (Starlette's FormData): one value per name, or all of them."""

    def get(self, key: str, /) -> Any: ...

    def getlist(self, key: str, /) -> list[Any]: ...


# The campaign editor's operators, in the order the query builder offers them.
QUERY_OPERATORS = (
    ("$eq", "equals"),
    ("$neq", "does not equal"),
    ("$gt", "greater than"),
    ("$gte", "at least"),
    ("$lt", "less than"),
    ("$lte", "at most"),
    ("$in", "is one of (comma-separated)"),
    ("$notIn", "is none of (comma-separated)"),
    ("$exists", "is set (true / false)"),
    ("$contains", "tags contain all of"),
    ("$containsAny", "tags contain any of"),
)
_LIST_OPERATORS = frozenset({"$in", "$notIn", "$contains", "$containsAny"})
# Fields of the query builder's suggestions; any c., t., e., ue. field may be typed.
QUERY_FIELD_SUGGESTIONS = (
    "b.language",
    "b.region",
    "b.app_version",
    "b.os_version",
    "b.device_model",
    "b.timezone",
    "b.custom_id",
    "b.install_date",
    "b.last_visit_date",
    "b.is_push_optin",
)
SEGMENTS = ("NEW", "ONE_TIME", "ENGAGED", "DORMANT", "IMPORTED")


def form_text(form: FormFields, name: str) -> str:
    value = form.get(name)
    return value.strip() if isinstance(value, str) else ""


def form_texts(form: FormFields, name: str) -> list[str]:
    return [value.strip() if isinstance(value, str) else "" for value in form.getlist(name)]


def parse_codes(text: str) -> list[str] | None:
    codes = [code.strip() for code in text.replace(";", ",").split(",") if code.strip()]
    return codes or None


def wire_time(value: str) -> str | None:
    """An <input type=datetime-local> value (yyyy-MM-ddTHH:mm[:ss]) as the API's date."""
    if not value:
        return None
    return value if len(value) == 19 else f"{value[:16]}:00"


def form_number(text: str) -> int | str | None:
    """An integer field: the API's validation reports a non-number with its own message."""
    if not text:
        return None
    return int(text) if text.lstrip("-").isdigit() else text


def _query_value(op: str, text: str) -> Any:
    """What a query builder row's value means: JSON when it reads as JSON (18, true, "18"),
    else the text itself; a comma-separated list for the list operators."""
    if op in _LIST_OPERATORS:
        return [scalar_value(part.strip()) for part in text.split(",") if part.strip()]
    return scalar_value(text)


def scalar_value(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text


def targeting_document(form: FormFields) -> dict[str, Any] | None:
    """The targeting part of the editor: segments, languages, regions, custom audiences, the
    query builder's rows (all of them, or any of them), and an optional raw JSON query that
    must hold as well (the form is read as the API reads a body: no rule is checked here)."""
    targeting: dict[str, Any] = {}
    segments = [s for s in form_texts(form, "segments") if s]
    if segments:
        targeting["segments"] = segments
    for key in ("languages", "regions"):
        codes = parse_codes(form_text(form, key))
        if codes:
            targeting[key] = codes
    audiences = [name for name in form_texts(form, "custom_audiences") if name]
    if audiences:
        targeting["custom_audiences"] = audiences
    conditions: list[dict[str, Any]] = []
    rows = zip(
        form_texts(form, "q_field"),
        form_texts(form, "q_op"),
        form_texts(form, "q_value"),
        strict=False,
    )
    for field, op, value in rows:
        if not field:
            continue
        conditions.append({field: {op or "$eq": _query_value(op, value)}})
    parts = []
    if conditions:
        join = "$or" if form_text(form, "q_join") == "or" else "$and"
        parts.append(conditions[0] if len(conditions) == 1 else {join: conditions})
    raw = form_text(form, "query_json")
    if raw:
        try:
            parts.append(orjson.loads(raw))
        except orjson.JSONDecodeError:
            raise MalformedParameterError(
                "targeting.query: the advanced query is not JSON"
            ) from None
    if parts:
        # The builder's rows, and the advanced query on top of them.
        targeting["query"] = parts[0] if len(parts) == 1 else {"$and": parts}
    return targeting or None


def campaign_document(form: FormFields, *, live: bool) -> dict[str, Any]:
    """The editor's fields as a Campaigns API create body; CampaignBody validates it."""
    document: dict[str, Any] = {"name": form_text(form, "name"), "live": live}
    when = form_text(form, "when") or "now"
    if when == "now":
        document["push_time"] = "now"
    elif when == "local":
        document["local_push_time"] = wire_time(form_text(form, "local_push_time")) or ""
    else:
        document["push_time"] = wire_time(form_text(form, "push_time")) or ""
    repeat_unit = form_text(form, "repeat_unit")
    if repeat_unit:
        recurrence: dict[str, Any] = {"repeat_unit": repeat_unit}
        for key in ("repeat_frequency", "occurrences"):
            number = form_number(form_text(form, key))
            if number is not None:
                recurrence[key] = number
        end = wire_time(form_text(form, "end_date"))
        if end:
            recurrence["end_date"] = end
        document["recurrence"] = recurrence
        capping = form_number(form_text(form, "capping"))
        if capping is not None:
            document["capping"] = capping
    return {**document, **push_document(form)}


def push_document(form: FormFields) -> dict[str, Any]:
    """What the push editors share (campaigns and automations): the messages per language and
    A/B version, the content options, and the targeting."""
    document: dict[str, Any] = {}
    messages = []
    rows = zip(
        form_texts(form, "message_version"),
        form_texts(form, "message_language"),
        form_texts(form, "message_title"),
        form_texts(form, "message_body"),
        strict=False,
    )
    for version, language, title, body in rows:
        if not (title or body):
            continue
        message: dict[str, Any] = {"language": language or "default", "body": body}
        if title:
            message["title"] = title
        if version:
            message["version"] = version.lower()
        messages.append(message)
    document["messages"] = messages
    split = form_text(form, "version_split")
    if split:
        document["version_split"] = _version_split(split)
    for key in ("deeplink", "custom_payload", "priority", "gcm_collapse_key"):
        value = form_text(form, key)
        if value:
            document[key] = value
    ttl = form_number(form_text(form, "time_to_live"))
    if ttl is not None:
        document["time_to_live"] = ttl
    document["push_type"] = form_text(form, "push_type") or "alert"
    media = {
        kind: form_text(form, f"media_{kind}")
        for kind in ("picture", "icon", "audio", "video")
        if form_text(form, f"media_{kind}")
    }
    if media:
        document["media"] = media
    targeting = targeting_document(form)
    if targeting is not None:
        document["targeting"] = targeting
    return document


def _version_split(text: str) -> dict[str, Any]:
    """ "a=60, b=40" (or "a:60 b:40") as {"a": 60, "b": 40}."""
    split: dict[str, Any] = {}
    for part in re.split(r"[,\s]+", text):
        if not part:
            continue
        name, _, share = part.replace(":", "=").partition("=")
        split[name.strip().lower()] = form_number(share.strip()) if share.strip() else share
    return split


# The Campaigns API fields the push editors show (push_document's and the name). The others
# (labels, say) are kept as stored when an editor saves, since it sends the whole campaign
# (update_campaign(replace=True)).
PUSH_FIELDS = frozenset(
    {
        "name", "live", "targeting", "messages", "version_split", "deeplink", "custom_payload",
        "media", "priority", "time_to_live", "push_type", "gcm_collapse_key",
    }
)  # fmt: skip
EDITOR_FIELDS = PUSH_FIELDS | {"push_time", "local_push_time", "recurrence", "capping"}
# What campaigns.service.describe_campaign adds to the stored body.
_DESCRIBED = frozenset(
    {"campaign_token", "from_api", "dev_only", "created_date", "state", "progress"}
)


def carry_hidden_fields(
    stored: dict[str, Any], document: dict[str, Any], *, shown: frozenset[str] = EDITOR_FIELDS
) -> dict[str, Any]:
    """The editor's document, plus the stored fields the editor does not show."""
    kept = {k: v for k, v in stored.items() if k not in shown and k not in _DESCRIBED}
    return {**kept, **document}


def campaign_form(document: dict[str, Any]) -> dict[str, Any]:
    """A stored campaign as the editor's field values (the inverse of campaign_document)."""
    recurrence = document.get("recurrence") or {}
    targeting = document.get("targeting") or {}
    media = document.get("media") or {}
    push_time = document.get("push_time")
    when = "local" if document.get("local_push_time") else ("now" if push_time == "now" else "date")
    query = targeting.get("query")
    split = document.get("version_split") or {}
    return {
        "name": document.get("name", ""),
        "when": when,
        "push_time": push_time if push_time and push_time != "now" else "",
        "local_push_time": document.get("local_push_time") or "",
        "repeat_unit": recurrence.get("repeat_unit", ""),
        "repeat_frequency": recurrence.get("repeat_frequency", ""),
        "end_date": recurrence.get("end_date") or "",
        "occurrences": recurrence.get("occurrences") or "",
        "capping": document.get("capping") or "",
        "messages": document.get("messages") or [],
        "version_split": ", ".join(f"{name}={share}" for name, share in split.items()),
        "deeplink": document.get("deeplink") or "",
        "custom_payload": document.get("custom_payload") or "",
        "priority": document.get("priority") or "",
        "gcm_collapse_key": _collapse_key(document.get("gcm_collapse_key")),
        "time_to_live": document.get("time_to_live") or "",
        "push_type": document.get("push_type") or "alert",
        "media": media,
        "segments": targeting.get("segments") or [],
        "languages": ", ".join(targeting.get("languages") or []),
        "regions": ", ".join(targeting.get("regions") or []),
        "custom_audiences": targeting.get("custom_audiences") or [],
        # A stored query is shown as JSON: the builder's rows are for composing new ones.
        "query_json": orjson.dumps(query, option=orjson.OPT_INDENT_2).decode() if query else "",
    }


def _collapse_key(value: Any) -> str:
    """The stored collapse key (a string, or the API's {"enabled", "key"} object) as text."""
    if isinstance(value, dict):
        return str(value.get("key", "")) if value.get("enabled") else ""
    return value if isinstance(value, str) else ""
