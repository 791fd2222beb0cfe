"""Shared pieces of the drafting tests: the recorded deploys (``records/*.json``, made by the real
engine with ``python -m tests.drafts.record``) and their facts."""

from __future__ import annotations

from typing import Any

import pytest

from guardrail.domain.drafts.facts import build_facts
from tests.drafts.record import NAMES, load

PUBLIC_URL = "https://guardrail.example.com/"
GRAFANA_URL = "https://grafana.example.com"


def facts_of(name: str, **kw: Any) -> dict[str, Any]:
    return build_facts(*load(name), public_url=PUBLIC_URL, grafana_url=GRAFANA_URL, **kw)


@pytest.fixture(scope="session")
def all_facts() -> dict[str, dict[str, Any]]:
    return {name: facts_of(name) for name in NAMES}
