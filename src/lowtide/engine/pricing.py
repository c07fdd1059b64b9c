"""The price a batch of a model is billed at: the model's configured real-time prices times
the batch discount (docs/api-compatibility.md, "Billing"); the test model is free, and a model
without prices costs nothing."""

from __future__ import annotations

from lowtide.backends.test_model import TEST_MODEL
from lowtide.domain.records import Pricing
from lowtide.settings import Settings


def pricing_of(settings: Settings, model: str) -> Pricing:
    billing = settings.billing
    prices = settings.models.get(model) if model != TEST_MODEL else None
    if prices is None:
        return Pricing(0.0, 0.0, billing.batch_discount, billing.currency)
    return Pricing(prices.input_price, prices.output_price, billing.batch_discount, prices.currency)
