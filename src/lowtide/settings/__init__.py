"""The one settings object, read from a TOML file and the environment at start-up.

Never built at import time: ``load_settings()`` is called by the CLI (the composition root).
Every key is documented in ``docs/configuration.md``; a test checks that the two agree.

``Settings`` (``root``) is the single root; its sections live in ``sections`` and, for the
backends and models, in ``backends`` (with the request body fields they set, ``body``).
``loading`` reads the file, and ``describe`` tells its errors in the file's own terms.
"""

from __future__ import annotations

from lowtide.settings.backends import BackendSettings, Dialect, ModelSettings
from lowtide.settings.body import BodyFields
from lowtide.settings.describe import describe_errors
from lowtide.settings.loading import CONFIG_ENV, load_settings
from lowtide.settings.root import Settings
from lowtide.settings.sections import (
    LOOPBACK_HOSTS,
    AccountLimits,
    AccountOverrides,
    ApiKeySettings,
    BillingSettings,
    CallbackSettings,
    EngineSettings,
    LimitSettings,
    MetricsSettings,
    RetentionSettings,
    S3Settings,
    SchedulingSettings,
    ServerSettings,
    TestingSettings,
)

__all__ = [
    "CONFIG_ENV",
    "LOOPBACK_HOSTS",
    "AccountLimits",
    "AccountOverrides",
    "ApiKeySettings",
    "BackendSettings",
    "BillingSettings",
    "BodyFields",
    "CallbackSettings",
    "Dialect",
    "EngineSettings",
    "LimitSettings",
    "MetricsSettings",
    "ModelSettings",
    "RetentionSettings",
    "S3Settings",
    "SchedulingSettings",
    "ServerSettings",
    "Settings",
    "TestingSettings",
    "describe_errors",
    "load_settings",
]
