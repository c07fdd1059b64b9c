"""``Settings``: the root of the one settings object, every section under it."""

from __future__ import annotations

import os

from pydantic import Field, field_validator, model_validator

from lowtide.settings.backends import BackendSettings, ModelSettings
from lowtide.settings.base import Strict
from lowtide.settings.sections import (
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


class Settings(Strict):
    server: ServerSettings = ServerSettings()
    api_keys: list[ApiKeySettings] = Field(default_factory=list)
    backends: list[BackendSettings] = Field(default_factory=list)
    models: dict[str, ModelSettings] = Field(default_factory=dict)
    billing: BillingSettings = BillingSettings()
    engine: EngineSettings = EngineSettings()
    limits: LimitSettings = LimitSettings()
    callbacks: CallbackSettings = CallbackSettings()
    metrics: MetricsSettings = MetricsSettings()
    account_defaults: AccountLimits = AccountLimits()
    accounts: dict[str, AccountOverrides] = Field(default_factory=dict)
    s3: S3Settings = S3Settings()
    retention: RetentionSettings = RetentionSettings()
    scheduling: SchedulingSettings = SchedulingSettings()
    testing: TestingSettings = TestingSettings()

    @field_validator("backends")
    @classmethod
    def _unique_backend_names(cls, value: list[BackendSettings]) -> list[BackendSettings]:
        names = [b.name for b in value]
        if len(names) != len(set(names)):
            raise ValueError("backend names must be unique")
        return value

    @model_validator(mode="after")
    def _testing_only_in_tests(self) -> Settings:
        if self.testing != TestingSettings() and os.environ.get("LOWTIDE_TESTING") != "1":
            raise ValueError("[testing] settings need LOWTIDE_TESTING=1 in the environment")
        return self

    def served_models(self) -> set[str]:
        return {model for backend in self.backends for model in backend.models}

    def http_backends(self) -> list[BackendSettings]:
        """The backends sent one request at a time (kind ``http``)."""
        return [b for b in self.backends if b.kind == "http"]

    def batch_backends(self) -> list[BackendSettings]:
        """The hosted Batch APIs that lines are offloaded to (kind ``batch``)."""
        return [b for b in self.backends if b.kind == "batch"]

    def keys_required(self) -> bool:
        return bool(self.api_keys)

    def limits_for(self, account: str) -> AccountLimits:
        override = self.accounts.get(account)
        if override is None:
            return self.account_defaults
        changes = {k: v for k, v in override.model_dump().items() if v is not None}
        return self.account_defaults.model_copy(update=changes)
