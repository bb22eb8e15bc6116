"""What each process knows of an app's live automations: which stored event names enter users
into which automation (and on what condition), and which cancel whose entries.

Every call that stores events asks it, so it is held in memory (decision 0026): an app's
catalogue is checked against the campaigns table at most once every REFRESH_SECONDS (one
aggregate over the app's active automations; the whole catalogue is read again only when that
changed), and dropped at once in the process that creates, changes, pauses or deletes an
automation (settle_entries calls forget_everywhere), so that a change made through one process
applies to the next event that process stores.

Another process sees a change within REFRESH_SECONDS. In that window, it may enter no one into
an automation just set live, or enter users into one just paused or deleted: those entries are
written after the pause cancelled the pending ones, and the dispatcher, which reads the
automation's state when an entry is due, cancels them then (reason "paused").
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from clarion.campaigns.models import Campaign, CampaignState
from clarion.campaigns.schemas import Trigger, stored_event_name

log = logging.getLogger(__name__)

# How stale a process's view of an app's automations may be (another process's change). The
# check is one indexed aggregate per app and process each time (~0.2 ms), so at 1,000 calls/s
# it costs one statement in a thousand.
REFRESH_SECONDS = 1.0


def same_value(a: Any, b: Any) -> bool:
    """Equality as a trigger's condition means it: `true` is not `1`, `"1"` is not `1` (Python's
    `True == 1` would say they are), `1` is `1.0`."""
    return a == b and isinstance(a, bool) == isinstance(b, bool)


@dataclass(frozen=True, slots=True)
class Entering:
    """An automation entered by an event of this name, when its condition holds."""

    campaign_id: int
    label: str | None
    attributes: tuple[tuple[str, Any], ...]
    delay: timedelta
    # The trigger's at_local_time is set: due_at is the delay's end, and the dispatcher moves it
    # to the next HH:MM in the user's zone (the entry's `timed` is false until then).
    local_time: bool
    once_per_days: int | None

    def matches(self, label: str | None, attributes: Mapping[str, Any] | None) -> bool:
        if self.label is not None and label != self.label:
            return False
        if not self.attributes:
            return True
        values = attributes or {}
        for name, wanted in self.attributes:
            if name not in values or not same_value(values[name], wanted):
                return False
        return True


@dataclass(frozen=True, slots=True)
class Cancelling:
    """An automation whose pending entries an event of this name cancels."""

    campaign_id: int
    # The cancel event as the trigger names it (`ue.purchased`): the cancelled entries' reason.
    event: str
    match_attribute: str | None


@dataclass(frozen=True)
class LiveAutomations:
    """One app's active automations, by the stored name of the events they listen to."""

    entering: Mapping[str, tuple[Entering, ...]] = field(default_factory=dict)
    cancelling: Mapping[str, tuple[Cancelling, ...]] = field(default_factory=dict)

    def listens_to(self, name: str) -> bool:
        return name in self.entering or name in self.cancelling


def build(automations: list[tuple[int, Trigger]]) -> LiveAutomations:
    entering: dict[str, list[Entering]] = {}
    cancelling: dict[str, list[Cancelling]] = {}
    for campaign_id, trigger in automations:
        entering.setdefault(trigger.stored_event, []).append(
            Entering(
                campaign_id=campaign_id,
                label=trigger.label,
                attributes=tuple((trigger.attributes or {}).items()),
                delay=timedelta(seconds=trigger.delay_seconds),
                local_time=trigger.at_local_time is not None,
                once_per_days=trigger.once_per_days,
            )
        )
        for cancel in trigger.cancel_events:
            cancelling.setdefault(stored_event_name(cancel.event), []).append(
                Cancelling(campaign_id, cancel.event, cancel.match_attribute)
            )
    return LiveAutomations(
        {name: tuple(rules) for name, rules in entering.items()},
        {name: tuple(rules) for name, rules in cancelling.items()},
    )


def _live(app_id: int) -> Any:
    return (
        Campaign.app_id == app_id,
        Campaign.state == CampaignState.ACTIVE.value,
        Campaign.deleted_at.is_(None),
    )


# What changes whenever the set of an app's active automations or one of them does: each
# change moves updated_at (pausing one moves it out of the set: count and sum of ids change).
Fingerprint = tuple[int, int, datetime | None]


async def _fingerprint(session: AsyncSession, app_id: int) -> Fingerprint:
    row = (
        await session.execute(
            select(
                func.count(), func.coalesce(func.sum(Campaign.id), 0), func.max(Campaign.updated_at)
            ).where(*_live(app_id))
        )
    ).one()
    return int(row[0]), int(row[1]), row[2]


async def load(session: AsyncSession, app_id: int) -> LiveAutomations:
    rows = await session.execute(select(Campaign.id, Campaign.body).where(*_live(app_id)))
    automations: list[tuple[int, Trigger]] = []
    for campaign_id, body in rows:
        try:
            automations.append((campaign_id, Trigger.model_validate(body["trigger"])))
        except (KeyError, TypeError, ValidationError):
            # Stored before a rule that now refuses it: that automation enters no one (and
            # says so) rather than failing every call that stores an event of its app.
            log.warning("automation %d: its stored trigger is not valid; skipped", campaign_id)
    return build(automations)


@dataclass
class _Held:
    fingerprint: Fingerprint
    live: LiveAutomations
    checked_at: float


# Every catalogue of the process (one per Runtime), for forget_everywhere.
_CATALOGUES: weakref.WeakSet[AutomationCatalogue] = weakref.WeakSet()


def forget_everywhere(app_id: int) -> None:
    """An automation of the app was created, changed, paused or deleted in this process."""
    for catalogue in list(_CATALOGUES):
        catalogue.forget(app_id)


class AutomationCatalogue:
    """Each app's LiveAutomations, read in the session of the call that asks (never a session
    of its own: the caller holds one) and kept until the check finds it stale."""

    def __init__(
        self,
        *,
        refresh_seconds: float = REFRESH_SECONDS,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.refresh_seconds = refresh_seconds
        self._monotonic = monotonic
        self._apps: dict[int, _Held] = {}
        # Moved by forget: a read that started before it is not kept.
        self._generation = 0
        _CATALOGUES.add(self)

    def forget(self, app_id: int) -> None:
        self._apps.pop(app_id, None)
        self._generation += 1

    async def live(self, session: AsyncSession, app_id: int) -> LiveAutomations:
        at = self._monotonic()
        held = self._apps.get(app_id)
        if held is not None and at - held.checked_at < self.refresh_seconds:
            return held.live
        generation = self._generation
        fingerprint = await _fingerprint(session, app_id)
        if held is not None and held.fingerprint == fingerprint:
            live = held.live
        else:
            live = await load(session, app_id) if fingerprint[0] else LiveAutomations()
        if generation == self._generation:
            self._apps[app_id] = _Held(fingerprint, live, at)
        return live
