"""Synthetic traffic for the judge tests (the public helper, under the short name the tests use)."""

from guardrail.testing import BOUNDS_S, T0
from guardrail.testing import SyntheticTraffic as Traffic

__all__ = ["BOUNDS_S", "T0", "Traffic"]
