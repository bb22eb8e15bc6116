"""Push providers behind one interface (base.Provider): APNs, FCM HTTP v1 and Web Push."""

from clarion.delivery.providers.apns import ApnsProvider
from clarion.delivery.providers.fcm import FcmProvider
from clarion.delivery.providers.webpush import WebPushProvider

__all__ = ["ApnsProvider", "FcmProvider", "WebPushProvider"]
