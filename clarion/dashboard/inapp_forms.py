"""The in-app editor's and theme editor's forms, read into the In-App Campaigns API's body and
the admin API's theme body, so that the API's rules give the same messages (no rule is checked
here: `inapp.service.validate_body` and `ThemeBody` do), and back into field values.

A message (one language, optionally one A/B version) is a row of the form with exactly
`MAX_ACTIONS` button slots, so the n-th row's buttons are the slots n*4 to n*4+3 of the
`cta_*` lists: rows can be added and removed by the page without renumbering any field.
"""

from __future__ import annotations

import string
from typing import Any

from clarion.dashboard.schemas import (
    FormFields,
    campaign_form,
    form_number,
    form_text,
    form_texts,
    targeting_document,
    wire_time,
)
from clarion.errors import MalformedParameterError
from clarion.inapp.schemas import MAX_ACTIONS, InAppCampaignBody, ThemeColours, ThemeRead

TRIGGER_CHOICES = (
    ("NEXT_SESSION", "At the next app start"),
    ("NOW", "As soon as the app has it"),
    ("EVENT", "After an event"),
)
GRACE_UNITS = ("MINUTES", "HOURS", "DAYS")
ACTION_CHOICES = (
    ("continue", "continue (closes)"),
    ("dismiss", "dismiss (closes)"),
    ("deeplink", "open a link"),
)
COLOUR_NAMES = tuple(ThemeColours.model_fields)
# The editor's fields; the stored body's other fields (version_split, say, set through the API)
# are kept as they are when the editor saves the whole campaign (update_campaign(replace=True)).
EDITOR_FIELDS = frozenset(
    {
        "name", "live", "labels", "start_date", "local_start_date", "end_date", "local_end_date",
        "trigger", "targeting", "landing", "deeplink", "custom_payload",
    }
)  # fmt: skip


def inapp_document(form: FormFields) -> dict[str, Any]:
    """The editor's fields as an In-App Campaigns API create body."""
    document: dict[str, Any] = {"name": form_text(form, "name"), "live": bool(form.get("live"))}
    labels = [label.strip() for label in form_text(form, "labels").split(",") if label.strip()]
    if labels:
        document["labels"] = labels
    start = form_text(form, "start_kind") or "now"
    if start == "utc":
        document["start_date"] = wire_time(form_text(form, "start")) or ""
    elif start == "local":
        document["local_start_date"] = wire_time(form_text(form, "start")) or ""
    end = form_text(form, "end_kind") or "none"
    if end in ("utc", "local"):
        document["end_date" if end == "utc" else "local_end_date"] = (
            wire_time(form_text(form, "end")) or ""
        )
    document["trigger"] = _trigger(form)
    targeting = targeting_document(form)
    if targeting is not None:
        document["targeting"] = targeting
    document["landing"] = _landing(form)
    for key in ("deeplink", "custom_payload"):
        value = form_text(form, key)
        if value:
            document[key] = value
    return document


def _trigger(form: FormFields) -> dict[str, Any]:
    when = form_text(form, "trigger_when") or "NEXT_SESSION"
    trigger: dict[str, Any] = {"when": when}
    if when.upper() == "EVENT":
        # Left out when blank, so that the API's message says the event is required.
        for key in ("event", "label"):
            value = form_text(form, f"trigger_{key}")
            if value:
                trigger[key] = value
    capping = form_number(form_text(form, "capping"))
    if capping is not None:
        trigger["capping"] = capping
    every = form_number(form_text(form, "grace_every"))
    if every is not None:
        trigger["grace_period"] = {"every": every, "unit": form_text(form, "grace_unit") or "HOURS"}
    return trigger


def _landing(form: FormFields) -> dict[str, Any]:
    landing: dict[str, Any] = {"theme": form_text(form, "theme") or "default"}
    for key in ("image", "image_description"):
        value = form_text(form, key)
        if value:
            landing[key] = value
    slots = list(
        zip(
            form_texts(form, "cta_label"),
            form_texts(form, "cta_action"),
            form_texts(form, "cta_link"),
            strict=False,
        )
    )
    contents = []
    rows = zip(
        form_texts(form, "content_version"),
        form_texts(form, "content_language"),
        form_texts(form, "content_header"),
        form_texts(form, "content_title"),
        form_texts(form, "content_body"),
        strict=False,
    )
    for index, (version, language, header, title, body) in enumerate(rows):
        actions = [
            _action(label, action, link)
            for label, action, link in slots[index * MAX_ACTIONS : (index + 1) * MAX_ACTIONS]
            if label or link
        ]
        if not (header or title or body or actions):
            continue  # a row left blank (the blank one the editor offers)
        content: dict[str, Any] = {"language": language or "default"}
        if version:
            content["version"] = version.lower()
        for key, value in (("header", header), ("title", title), ("body", body)):
            if value:
                content[key] = value
        if actions:
            content["actions"] = actions
        contents.append(content)
    landing["contents"] = contents
    return landing


def _action(label: str, action: str, link: str) -> dict[str, Any]:
    read: dict[str, Any] = {"label": label, "action": action or "continue"}
    if link or action == "deeplink":
        read["args"] = {"l": link}
    return read


def inapp_form(document: dict[str, Any]) -> dict[str, Any]:
    """A stored (or refused) campaign as the editor's field values: the inverse of
    inapp_document. Each message comes with exactly MAX_ACTIONS button slots."""
    trigger = document.get("trigger") or {}
    grace = trigger.get("grace_period") or {}
    landing = document.get("landing") or {}
    if document.get("local_start_date"):
        start_kind, start = "local", document["local_start_date"]
    elif document.get("start_date") and document["start_date"] != "now":
        start_kind, start = "utc", document["start_date"]
    else:
        start_kind, start = "now", ""
    if document.get("local_end_date"):
        end_kind, end = "local", document["local_end_date"]
    elif document.get("end_date"):
        end_kind, end = "utc", document["end_date"]
    else:
        end_kind, end = "none", ""
    contents = []
    for content in landing.get("contents") or [{"language": "default"}]:
        actions = [
            {
                "label": action.get("label") or "",
                "action": str(action.get("action") or "continue").lower().removeprefix("batch."),
                "link": (action.get("args") or {}).get("l") or "",
            }
            for action in (content.get("actions") or [])[:MAX_ACTIONS]
        ]
        blank = {"label": "", "action": "continue", "link": ""}
        contents.append(
            {
                "version": content.get("version") or "",
                "language": content.get("language") or "default",
                "header": content.get("header") or "",
                "title": content.get("title") or "",
                "body": content.get("body") or "",
                "actions": actions + [blank] * (MAX_ACTIONS - len(actions)),
            }
        )
    targeting = campaign_form({"targeting": document.get("targeting") or {}})
    return {
        "name": document.get("name", ""),
        "live": bool(document.get("live")),
        "labels": ", ".join(document.get("labels") or []),
        "start_kind": start_kind,
        "start": start,
        "end_kind": end_kind,
        "end": end,
        "trigger_when": str(trigger.get("when") or "NEXT_SESSION").upper(),
        "trigger_event": trigger.get("event") or "",
        "trigger_label": trigger.get("label") or "",
        "capping": trigger.get("capping") or "",
        "grace_every": grace.get("every") or "",
        "grace_unit": str(grace.get("unit") or "HOURS").upper(),
        "theme": landing.get("theme") or "default",
        "image": landing.get("image") or "",
        "image_description": landing.get("image_description") or "",
        "contents": contents,
        "deeplink": document.get("deeplink") or "",
        "custom_payload": document.get("custom_payload") or "",
        **{
            key: targeting[key]
            for key in ("segments", "languages", "regions", "custom_audiences", "query_json")
        },
    }


def carry_hidden_fields(stored: dict[str, Any], document: dict[str, Any]) -> dict[str, Any]:
    """The editor's document, plus the stored body's fields the editor does not show (what
    describe_campaign adds about the campaign, its token say, is not part of the body)."""
    kept = {key: value for key, value in stored.items() if key in _NOT_EDITED}
    merged = {**kept, **document}
    _carry_action_args(stored, merged)
    return merged


def _carry_action_args(stored: dict[str, Any], document: dict[str, Any]) -> None:
    """A button's args the editor has no field for (only the link, `l`, is shown) stay as
    stored, for the same message (version and language) and button position and action."""
    before = {
        (content.get("version"), content.get("language", "default")): content.get("actions", [])
        for content in (stored.get("landing") or {}).get("contents", [])
    }
    for content in (document.get("landing") or {}).get("contents", []):
        old = before.get((content.get("version"), content.get("language", "default")), [])
        for position, action in enumerate(content.get("actions", [])):
            if position >= len(old) or old[position].get("action") != action.get("action"):
                continue
            hidden = {k: v for k, v in (old[position].get("args") or {}).items() if k != "l"}
            if hidden:
                action["args"] = {**hidden, **(action.get("args") or {})}


# The API body's fields the editor has no field for (version_split).
_NOT_EDITED = frozenset(InAppCampaignBody.model_fields) - EDITOR_FIELDS


# Themes -----------------------------------------------------------------------------------------


def theme_document(form: FormFields) -> dict[str, Any]:
    """The theme editor's fields as the admin API's theme body (ThemeBody validates it)."""
    colours = {}
    for name in COLOUR_NAMES:
        colour = form_text(form, f"colour_{name}")
        if not colour:
            continue
        alpha = form_number(form_text(form, f"alpha_{name}"))
        if alpha is not None and not (isinstance(alpha, int) and 0 <= alpha <= 100):
            raise MalformedParameterError(f"colours.{name}: the opacity is a percentage, 0 to 100")
        colours[name] = _with_alpha(colour, alpha)
    document: dict[str, Any] = {
        "name": form_text(form, "name"),
        "layout": form_text(form, "layout") or "modal",
        "colours": colours,
        "close_button": form_text(form, "close_button") or "top_right",
    }
    font = {
        "family": form_text(form, "font_family"),
        "size": form_number(form_text(form, "font_size")),
    }
    document["font"] = {key: value for key, value in font.items() if value}
    for key in ("corner_radius", "auto_close_seconds"):
        number = form_number(form_text(form, key))
        if number is not None:
            document[key] = number
    return document


def _with_alpha(colour: str, alpha: int | str | None) -> str:
    """An <input type=color> value (#rrggbb) and an opacity in percent as #rrggbb[aa]: opaque
    colours stay 6 digits. Anything else is left as typed for ThemeBody's message."""
    if not isinstance(alpha, int) or alpha >= 100 or len(colour) != 7:
        return colour
    return f"{colour}{round(alpha * 255 / 100):02x}"


def theme_form(theme: ThemeRead | dict[str, Any]) -> dict[str, Any]:
    """A theme (stored, or refused as typed) as the theme editor's field values."""
    read = theme.model_dump(mode="json") if isinstance(theme, ThemeRead) else theme
    font = read.get("font") or {}
    colours = {}
    for name in COLOUR_NAMES:
        value = (read.get("colours") or {}).get(name) or str(
            ThemeColours.model_fields[name].default
        )
        colours[name] = _split_colour(value)
    return {
        "code": read.get("code") or "",
        "name": read.get("name") or "",
        "layout": read.get("layout") or "modal",
        "colours": colours,
        "font_family": font.get("family") or "system-ui, sans-serif",
        "font_size": font.get("size") or 16,
        "close_button": read.get("close_button") or "top_right",
        "corner_radius": read.get("corner_radius", 12),
        "auto_close_seconds": read.get("auto_close_seconds", 0),
    }


def _split_colour(value: str) -> dict[str, Any]:
    """#RGB, #RGBA, #RRGGBB or #RRGGBBAA as an <input type=color> value and an opacity (%)."""
    digits = value.lstrip("#")
    if len(digits) not in (3, 4, 6, 8) or not all(d in string.hexdigits for d in digits):
        return {"hex": "#000000", "alpha": 100}  # refused as typed: ThemeBody's message says so
    if len(digits) in (3, 4):
        digits = "".join(digit * 2 for digit in digits)
    alpha = round(int(digits[6:8], 16) * 100 / 255) if len(digits) == 8 else 100
    return {"hex": f"#{digits[:6].lower()}", "alpha": alpha}
