"""Helpers shared by the test tiers: plain modules, imported by the tiers' conftests and tests
(a tier never imports another tier's conftest)."""
