"""Issue 14 part D over HTTP: every marker problem in one 400, and a rolled-back deploy's step shown
as ended in the API and on the page."""

from __future__ import annotations

from tests.api.conftest import Api
from tests.api.helpers import marker
from tests.api.pagedom import parse

REQUIRED = ["environment", "version", "previous_version", "commit", "change_type", "strategy"]


async def test_a_marker_missing_six_fields_gets_all_six_in_one_400(api: Api) -> None:
    status, body = await api.call("POST", "/api/v1/deploys", as_="ci", json={"service": "checkout"})
    assert status == 400
    assert body["error"] == "invalid"
    assert [e["field"] for e in body["errors"]] == REQUIRED
    assert all(e["detail"] == f"{e['field']} is required" for e in body["errors"])
    assert body["field"] == "environment"  # the first, as before, for clients that read one
    for key in REQUIRED:
        assert key in body["detail"]
    assert "more problem" not in body["detail"]
    status, listed = await api.call("GET", "/api/v1/deploys")
    assert listed["deploys"] == []  # nothing stored


async def test_problems_of_different_kinds_are_listed_with_their_paths(api: Api) -> None:
    bad = marker(change_type="refactor", steps=[{"weight": 10}, {"weight": "half"}], colour="red")
    status, body = await api.call("POST", "/api/v1/deploys", as_="ci", json=bad)
    assert status == 400
    fields = {e["field"] for e in body["errors"]}
    assert {"change_type", "steps[1].weight", "colour"} <= fields, body
    assert body["field"] in fields


async def test_a_single_problem_still_has_a_one_entry_list(api: Api) -> None:
    status, body = await api.call("POST", "/api/v1/deploys", as_="ci", json=marker(change_type="refactor"))
    assert status == 400
    assert body["field"] == "change_type"
    assert body["errors"] == [{"field": "change_type", "detail": body["detail"]}]


async def test_after_a_rollback_the_step_reads_as_ended(api: Api) -> None:
    d = await api.mark(marker())
    assert d["step"]["summary"] == "step 1/3: 10% of traffic"
    status, out = await api.call(
        "POST", f"/api/v1/deploys/{d['id']}/rollback", as_="operator", json={"reason": "checkout looks off"}
    )
    assert status == 200 and out["state"] in ("rolling_back", "rolled_back"), out  # answered before the call
    out = await api.settled(d["id"])
    assert out["state"] == "rolled_back", out
    assert out["step"]["summary"] == "rolled back at step 1/3 (10% of traffic)"
    assert out["step"]["description"] == "10% of traffic"  # unchanged for existing clients
    resp = await api.client.get(f"/deploys/{d['id']}")
    page = parse(await resp.text())
    assert page.one(id="step").text == "rolled back at step 1/3 (10% of traffic)"
