"""Capping: which installations a push may still reach under the app's caps, and the receipts
of the pushes that count. No HTTP here."""

from __future__ import annotations
