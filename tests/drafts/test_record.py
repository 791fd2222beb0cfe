"""The recorded deploys the goldens are drafted from are still what the real engine produces:
``record.py`` is run again on fresh SQLite databases and compared with ``records/*.json`` (the
adapter calls' measured wall seconds aside). When the engine changes on purpose, re-record with
``.venv/bin/python -m tests.drafts.record`` and regenerate the goldens."""

from __future__ import annotations

import json
from typing import Any

from tests.drafts.record import NAMES, RECORDS, record_all


def _without_measured_seconds(o: Any) -> Any:
    if isinstance(o, dict):
        return {k: _without_measured_seconds(v) for k, v in o.items() if k != "seconds"}
    if isinstance(o, list):
        return [_without_measured_seconds(v) for v in o]
    return o


async def test_the_engine_still_produces_the_recorded_deploys() -> None:
    fresh = await record_all()
    for name in NAMES:
        stored = json.loads((RECORDS / f"{name}.json").read_text())
        assert _without_measured_seconds(fresh[name]) == _without_measured_seconds(stored), (
            f"{name}: the engine's record changed; re-record (python -m tests.drafts.record) and review the goldens"
        )
