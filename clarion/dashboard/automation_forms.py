"""The automation editor's form, read into a Campaigns API 1.1 body with a `trigger` (and back),
so that the API's rules give its messages; and the form field a refusal names, so that the
editor shows the message beside that field."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from clarion.dashboard.schemas import (
    PUSH_FIELDS,
    FormFields,
    campaign_form,
    form_number,
    form_text,
    form_texts,
    parse_codes,
    push_document,
    scalar_value,
)
from clarion.errors import MalformedParameterError

# The delay's units, largest first (the form shows a stored delay in the largest that fits).
DELAY_UNITS = {"days": 86400, "hours": 3600, "minutes": 60, "seconds": 1}
# The Campaigns API fields the automation editor shows; others (none today) are kept as stored.
AUTOMATION_FIELDS = PUSH_FIELDS | {"trigger", "labels"}


def automation_document(form: FormFields, *, live: bool) -> dict[str, Any]:
    """The editor's fields as a Campaigns API create body with a trigger (read as the API reads
    a body: CampaignBody checks every rule)."""
    trigger: dict[str, Any] = {"event": form_text(form, "trigger_event")}
    label = form_text(form, "trigger_label")
    if label:
        trigger["label"] = label
    attributes = {
        name: scalar_value(value)
        for name, value in zip(
            form_texts(form, "cond_name"), form_texts(form, "cond_value"), strict=False
        )
        if name
    }
    if attributes:
        trigger["attributes"] = attributes
    delay = _delay_seconds(form)
    if delay is not None:
        trigger["delay_seconds"] = delay
    at_local_time = form_text(form, "at_local_time")
    if at_local_time:
        trigger["at_local_time"] = at_local_time
    cancel_events = []
    rows = zip(form_texts(form, "cancel_event"), form_texts(form, "cancel_match"), strict=False)
    for event, match in rows:
        if event or match:
            cancel_events.append({"event": event, **({"match_attribute": match} if match else {})})
    if cancel_events:
        trigger["cancel_events"] = cancel_events
    if form_text(form, "entry") == "once":
        once = form_number(form_text(form, "once_per_days"))
        # Left empty, "once per" is refused by the API's rule, naming the field.
        trigger["once_per_days"] = "" if once is None else once
    quiet = {
        key: form_text(form, f"quiet_{key}")
        for key in ("start", "end")
        if form_text(form, f"quiet_{key}")
    }
    if quiet:
        trigger["quiet_hours"] = quiet
    conversion_event = form_text(form, "conversion_event")
    if conversion_event:
        conversion: dict[str, Any] = {"event": conversion_event}
        hours = form_number(form_text(form, "conversion_hours"))
        if hours is not None:
            conversion["within_hours"] = hours
        trigger["conversion"] = conversion
    document: dict[str, Any] = {"name": form_text(form, "name"), "live": live}
    labels = parse_codes(form_text(form, "labels"))
    if labels:
        document["labels"] = labels
    document["trigger"] = trigger
    return {**document, **push_document(form)}


def _delay_seconds(form: FormFields) -> int | str | None:
    value = form_number(form_text(form, "delay_value"))
    unit = form_text(form, "delay_unit") or "seconds"
    if unit not in DELAY_UNITS:
        raise MalformedParameterError(f"trigger.delay_seconds: unknown unit {unit[:20]!r}")
    # Not a number: the API's validation says so, naming the field.
    return value * DELAY_UNITS[unit] if isinstance(value, int) else value


def automation_form(document: dict[str, Any]) -> dict[str, Any]:
    """A stored automation as the editor's field values (the inverse of automation_document)."""
    trigger = document.get("trigger") or {}
    delay = trigger.get("delay_seconds") or 0
    unit = "seconds"
    if isinstance(delay, int):
        unit = next(name for name, size in DELAY_UNITS.items() if delay % size == 0)
    quiet = trigger.get("quiet_hours") or {}
    conversion = trigger.get("conversion") or {}
    return {
        **campaign_form(document),
        "labels": ", ".join(document.get("labels") or []),
        "trigger_event": trigger.get("event", ""),
        "trigger_label": trigger.get("label") or "",
        "conditions": [
            {"name": name, "value": _shown(value)}
            for name, value in (trigger.get("attributes") or {}).items()
        ],
        "delay_value": delay // DELAY_UNITS[unit] if isinstance(delay, int) and delay else delay,
        "delay_unit": unit,
        "at_local_time": trigger.get("at_local_time") or "",
        "cancel_events": trigger.get("cancel_events") or [],
        "entry": "every" if trigger.get("once_per_days") is None else "once",
        "once_per_days": trigger.get("once_per_days") or "",
        "quiet_start": quiet.get("start", ""),
        "quiet_end": quiet.get("end", ""),
        "conversion_event": conversion.get("event", ""),
        "conversion_hours": conversion.get("within_hours", ""),
    }


def _shown(value: Any) -> str:
    """A condition's value as typed: text as itself, unless it would read back as something
    else (then JSON-quoted, as the query builder does)."""
    if isinstance(value, str):
        return value if scalar_value(value) == value else f'"{value}"'
    return "true" if value is True else "false" if value is False else str(value)


@dataclass(frozen=True)
class Refusal:
    """A refused form's message, and the field (with its row, for a repeated one) it names."""

    message: str
    field: str
    row: int | None = None


# API field paths (and their sub-paths) -> the editor's field that holds them.
_FIELDS = {
    "name": "name",
    "labels": "labels",
    "trigger": "trigger_event",
    "trigger.event": "trigger_event",
    "trigger.label": "trigger_label",
    "trigger.attributes": "cond_name",
    "trigger.delay_seconds": "delay_value",
    "trigger.at_local_time": "at_local_time",
    "trigger.cancel_events": "cancel_event",
    "trigger.once_per_days": "once_per_days",
    "trigger.quiet_hours": "quiet_start",
    "trigger.quiet_hours.end": "quiet_end",
    "trigger.conversion": "conversion_event",
    "trigger.conversion.within_hours": "conversion_hours",
    "messages": "message_body",
    "version_split": "version_split",
    "deeplink": "deeplink",
    "custom_payload": "custom_payload",
    "media": "media_picture",
    "media.icon": "media_icon",
    "media.audio": "media_audio",
    "media.video": "media_video",
    "priority": "priority",
    "time_to_live": "time_to_live",
    "push_type": "push_type",
    "gcm_collapse_key": "gcm_collapse_key",
    "targeting": "targeting",
    "targeting.query": "query_json",
    "targeting.languages": "languages",
    "targeting.regions": "regions",
}
# Fields of repeated rows: (path pattern, the row's field for each sub-field, the default).
_ROWS = (
    (
        re.compile(r"trigger\.cancel_events\.(\d+)(?:\.(\w+))?"),
        {"match_attribute": "cancel_match"},
        "cancel_event",
    ),
    (
        re.compile(r"messages\.(\d+)(?:\.(\w+))?"),
        {"title": "message_title", "language": "message_language", "version": "message_version"},
        "message_body",
    ),
)
_NAMED = re.compile(r"^[A-Z_]+: ([\w.]+)(?::| is required)")


def refusal_of(message: str) -> Refusal | None:
    """The editor's field a Batch error message names ("MALFORMED_PARAMETER: trigger.
    delay_seconds: ..."), or None when it names none the editor shows."""
    named = _NAMED.match(message)
    if named is None:
        return None
    path = named.group(1)
    for pattern, fields, default in _ROWS:
        row = pattern.fullmatch(path) or pattern.match(path)
        if row is not None:
            return Refusal(message, fields.get(row.group(2) or "", default), int(row.group(1)))
    prefixes = [key for key in _FIELDS if path == key or path.startswith(f"{key}.")]
    if not prefixes:
        return None
    return Refusal(message, _FIELDS[max(prefixes, key=len)])
