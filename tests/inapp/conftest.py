# The dashboard tests' Chromium (Debian's, launched with the same options), for the renderer's.
from tests.test_dashboard_e2e import browser  # noqa: F401
