"""Automations in the background: the dispatcher that sends due entries."""

from __future__ import annotations
