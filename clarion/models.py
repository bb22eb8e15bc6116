"""Imports every domain's models so that Base.metadata knows all tables (Alembic, tests)."""

from clarion.apps.models import App, Company
from clarion.audiences.models import Audience, AudienceIndexing, AudienceMember
from clarion.automations.models import AutomationEntry
from clarion.campaigns.models import Campaign, CampaignReceipt, CampaignRun
from clarion.capping.models import CappingReceipt
from clarion.custom_data.models import ProfileAttribute, ProfileTag
from clarion.dashboard.models import DashboardSession, DashboardUser
from clarion.delivery.models import DeliveryBatch, Send
from clarion.events.models import InAppEvent, PushEvent, TrackedEvent
from clarion.exports.models import ExportDestination, ExportRun
from clarion.gdpr.models import BlockedId, GdprRequest
from clarion.imports.models import ImportFile, ImportFileMember, ImportRun, ImportSource
from clarion.inapp.models import InAppCampaign, InAppRevision, InAppSupply, InAppTheme
from clarion.ratelimit import RateLimitBucket
from clarion.sdk.models import Installation
from clarion.transactional.models import GroupOpenDay

__all__ = [
    "App",
    "Audience",
    "AudienceIndexing",
    "AudienceMember",
    "AutomationEntry",
    "BlockedId",
    "Campaign",
    "CampaignReceipt",
    "CampaignRun",
    "CappingReceipt",
    "Company",
    "DashboardSession",
    "DashboardUser",
    "DeliveryBatch",
    "ExportDestination",
    "ExportRun",
    "GdprRequest",
    "GroupOpenDay",
    "ImportFile",
    "ImportFileMember",
    "ImportRun",
    "ImportSource",
    "InAppCampaign",
    "InAppEvent",
    "InAppRevision",
    "InAppSupply",
    "InAppTheme",
    "Installation",
    "ProfileAttribute",
    "ProfileTag",
    "PushEvent",
    "RateLimitBucket",
    "Send",
    "TrackedEvent",
]
