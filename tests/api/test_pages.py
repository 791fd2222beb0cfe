"""The HTML pages: GET /deploys/{id} (header, charts, timeline, evidence, links) and GET /deploys."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from guardrail.adapters.http.schemas import MarkerIn
from guardrail.config import Settings
from guardrail.domain.drafts import Draft, DraftKind
from tests.api.conftest import Api, make_settings
from tests.api.helpers import T0, WINDOW_S, marker, window
from tests.api.pagedom import Element, parse, timeline


async def get_page(api: Api, path: str, **headers: str) -> tuple[int, Element, Any]:
    resp = await api.client.get(path, headers=headers)
    body = await resp.text()
    return resp.status, parse(body), resp


async def regressed(api: Api, **overrides: Any) -> dict[str, Any]:
    """A canary with 4x the baseline's errors, pushed until it is rolled back (a few windows)."""
    d = await api.mark(marker(**overrides))
    for i in range(60):
        out = await api.push(d["id"], window(i, 10, canary_error_rate=0.02))
        if out["deploy"]["state"] == "rolled_back":
            return out["deploy"]
    raise AssertionError(f"not rolled back: {out['deploy']['state']}")


async def test_deploy_page_shows_the_header_with_state_reason_and_step(api: Api) -> None:
    d = await regressed(api)
    status, page, resp = await get_page(api, f"/deploys/{d['id']}")
    assert status == 200 and resp.content_type == "text/html"
    assert "script-src" not in resp.headers["Content-Security-Policy"]  # default-src 'none': no script runs
    h1 = page.one("h1").text
    assert "checkout" in h1 and "v2.4.1" in h1 and "v2.4.0" in h1
    state = page.one(id="state")
    assert state.text == "rolled back" and "bad" in state.classes
    assert "canary analysis failed" in page.one(id="reason").text
    assert page.one(id="step").text == "rolled back at step 1/3 (10% of traffic)"
    facts = page.one("dl", cls="facts").text
    for text in ("production", "9f1c2ab", "dana", "canary", "feature", "10% of traffic → 50% of traffic"):
        assert text in facts, text


async def test_timeline_has_verdicts_actions_with_durations_and_transitions(api: Api) -> None:
    d = await regressed(api)
    _, page, _ = await get_page(api, f"/deploys/{d['id']}")
    entries = timeline(page)
    fails = [e for e in entries if "verdict-fail" in e.classes]
    assert len(fails) == 1 and fails[0].badge == "FAIL"
    actions = [e.body for e in entries if "action" in e.classes]
    assert len(actions) == 2 and actions[0].startswith("step 1/3: v2.4.1 on 10% of traffic: done")
    assert actions[1].startswith("roll back to v2.4.0: done")
    assert all("(took " in a for a in actions)  # the start is merged into the result, with its duration
    assert any("rolled back" in e.badge for e in entries)


async def test_continue_snapshots_are_folded_into_one_entry(api: Api) -> None:
    d = await api.mark(marker(analysis={"interval_s": 10}))
    for i in range(6):  # healthy and too little data to decide: six CONTINUE snapshots in a row
        await api.push(d["id"], window(i, 10, total=200))
    _, page, _ = await get_page(api, f"/deploys/{d['id']}")
    top = page.one("ol", id="timeline")
    folds = [li for li in top.children if "fold" in li.classes]
    assert len(folds) == 1
    inner = folds[0].find_all("li", cls="continue")
    assert len(inner) >= 5 and f"{len(inner)} analysis snapshots" in folds[0].text


async def test_charts_draw_both_tracks_and_the_judges_band_with_marks(api: Api) -> None:
    d = await regressed(api)
    _, page, _ = await get_page(api, f"/deploys/{d['id']}")
    err = page.one("figure", id="chart-error-rate")
    for track in ("canary", "baseline"):
        path = err.one("path", data_series=track).attrs["d"]
        assert path.startswith("M") and path.count("L") >= 1, track
    assert err.find_all("circle", cls="canary")
    p99 = page.one("figure", id="chart-latency-p99")
    assert p99.one("path", data_series="canary").attrs["d"].startswith("M")
    judge = page.one("figure", id="chart-judge-error-rate")
    assert judge.one("path", cls="band").attrs["d"].endswith("Z")
    assert judge.one("path", data_series="estimate").attrs["d"].startswith("M")
    assert judge.find_all("line", cls="rule-allowed") and judge.find_all("line", cls="rule-critical")
    assert [t.text for t in judge.find_all("text", cls="mark-decision-fail")] == ["FAIL"]
    steps = [t.text for t in judge.find_all("text", cls="mark-step")]
    assert steps and steps[0].startswith("step 1")


async def test_evidence_table_lists_the_latest_verdicts_metrics(api: Api) -> None:
    d = await regressed(api)
    _, page, _ = await get_page(api, f"/deploys/{d['id']}")
    rows = {r.attrs["data-metric"]: r for r in page.one("table", id="evidence").find_all("tr", cls="metric")}
    assert {"error_rate", "latency_p99", "throughput"} <= set(rows)
    err = rows["error_rate"]
    assert err.one("span", cls="status").text == "fail"
    cells = [td.text for td in err.find_all("td")]
    assert cells[2] == "2%" and cells[3] == "0.5%"  # canary and baseline error rates
    assert page.one(id="verdict-summary").one("span", cls="status").text == "fail"


async def test_unknown_deploy_is_an_html_404(api: Api) -> None:
    status, page, resp = await get_page(api, "/deploys/does-not-exist")
    assert status == 404 and resp.content_type == "text/html"
    assert "does-not-exist" in page.one("p", cls="error-detail").text


async def test_list_page_filters_by_service_environment_and_state(api: Api) -> None:
    a = await api.mark(marker(service="checkout"))
    b = await api.mark(marker(service="search"))
    c = await api.mark(marker(service="checkout", environment="staging"))
    status, _ = await api.call(
        "POST", f"/api/v1/deploys/{b['id']}/rollback", as_="operator", json={"reason": "wrong build"}
    )
    assert status == 200
    await api.settled(b["id"])

    async def ids(query: str) -> list[str]:
        status, page, _ = await get_page(api, f"/deploys{query}")
        assert status == 200, query
        return [r.attrs["data-id"] for r in page.find_all("tr", cls="deploy")]

    assert await ids("") == [c["id"], b["id"], a["id"]]  # newest first
    assert await ids("?service=checkout") == [c["id"], a["id"]]
    assert await ids("?service=checkout&environment=production") == [a["id"]]
    assert await ids("?state=rolled_back") == [b["id"]]
    assert await ids("?service=&environment=&state=") == [c["id"], b["id"], a["id"]]  # an empty form
    _, page, _ = await get_page(api, "/deploys?state=rolled_back")
    row = page.one("tr", cls="deploy")
    assert row.one("a").attrs["href"] == f"/deploys/{b['id']}"
    assert "rolled back" in row.text and "search" in row.text


async def test_list_page_rejects_an_unknown_state_naming_the_field(api: Api) -> None:
    status, page, resp = await get_page(api, "/deploys?state=exploded")
    assert status == 400 and resp.content_type == "text/html"
    detail = page.one("p", cls="error-detail").text
    assert "state" in detail and "exploded" in detail


async def test_marker_text_is_escaped_never_markup(api: Api) -> None:
    evil = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    d = await api.mark(marker(description=evil, changes=[evil], author='"><b>dana</b>'))
    for path in (f"/deploys/{d['id']}", "/deploys"):
        resp = await api.client.get(path)
        html = await resp.text()
        assert "<script>alert" not in html and "<img src=x" not in html, path
        page = parse(html)
        assert not page.find_all("script") and not page.find_all("img") and not page.find_all("b"), path
    _, page, _ = await get_page(api, f"/deploys/{d['id']}")
    assert page.one("p", cls="description").text == evil  # shown as text, exactly


async def test_only_http_links_from_the_marker_become_links(api: Api) -> None:
    body = MarkerIn.model_validate_json(json.dumps(marker())).to_domain(api.settings.analysis)
    body = replace(body, links={"pr": "https://git.example.test/pr/9", "ci_run": "javascript:alert(1)"})
    deploy, _ = await api.engine.record_deploy(body)
    deploy = await api.engine.settle(deploy.id)  # its first step is applied in the background
    _, page, _ = await get_page(api, f"/deploys/{deploy.id}")
    hrefs = [a.attrs["href"] for a in page.one("ul", id="links").find_all("a")]
    assert "https://git.example.test/pr/9" in hrefs
    assert not any(h.startswith("javascript") for h in hrefs)
    assert "javascript:alert(1)" in page.one("ul", id="links").text  # still visible, as text


async def test_drafts_are_listed_with_links_to_their_rendered_page_and_json(api: Api) -> None:
    d = await api.mark(marker())
    for kind in (DraftKind.ROLLBACK_PLAN, DraftKind.ROLLBACK_PLAN, DraftKind.ANNOUNCEMENT):
        await api.store.add_draft(Draft(d["id"], kind, 0, "# x", "offline", "", T0))
    _, page, _ = await get_page(api, f"/deploys/{d['id']}")
    items = page.one("ul", id="drafts").find_all("li")
    assert [li.one("a", cls="draft").attrs["href"] for li in items] == [
        f"/deploys/{d['id']}/drafts/announcement",
        f"/deploys/{d['id']}/drafts/rollback-plan",
    ]
    assert [a.attrs["href"] for a in items[1].find_all("a") if "draft" not in a.classes] == [
        f"/api/v1/deploys/{d['id']}/drafts/rollback-plan",
        f"/api/v1/deploys/{d['id']}/drafts/rollback-plan?format=markdown",
    ]
    assert "v2" in items[1].text  # the latest version of each kind


POSTMORTEM = """# Post-mortem: checkout {version}

## Summary
The canary **failed** at +0:20: error rate 2% vs 0.5%.

## Timeline
| time | what |
| --- | --- |
| +0:00 | step 1 |

- a list item with `code`
- [the pull request](https://git.example.test/pr/9) and [a trap](javascript:alert(1))

<script>alert("md")</script><img src=x onerror=alert(2)>
"""


async def test_a_draft_is_rendered_as_html_from_its_markdown_escaping_user_text(api: Api) -> None:
    evil = '<script>alert("x")</script>'
    d = await api.mark(marker(description=evil))
    await api.store.add_draft(
        Draft(d["id"], DraftKind.POSTMORTEM, 0, POSTMORTEM.format(version=evil), "offline", "", T0)
    )
    resp = await api.client.get(f"/deploys/{d['id']}/drafts/postmortem")
    html = await resp.text()
    assert resp.status == 200 and resp.content_type == "text/html"
    assert "script-src" not in resp.headers["Content-Security-Policy"]
    page = parse(html)
    doc = page.one("article", id="draft")
    assert doc.one("h1").text == f"Post-mortem: checkout {evil}"  # the marker's text, as text
    assert [h.text for h in doc.find_all("h2")] == ["Summary", "Timeline"]
    assert doc.one("strong").text == "failed" and doc.one("code").text == "code"
    assert [td.text for td in doc.one("table").find_all("td")] == ["+0:00", "step 1"]
    hrefs = [a.attrs.get("href", "") for a in doc.find_all("a")]
    assert hrefs == ["https://git.example.test/pr/9"]  # the javascript: link stays text
    assert not page.find_all("script") and not page.find_all("img")
    assert "<script>" not in html and 'alert("md")' in doc.text  # raw HTML in Markdown is shown as text
    back = page.one("a", id="deploy-link").attrs["href"]
    assert back == f"/deploys/{d['id']}"


async def test_a_draft_page_of_a_kind_never_drafted_is_an_html_404(api: Api) -> None:
    d = await api.mark(marker())
    for path, detail in (
        (f"/deploys/{d['id']}/drafts/postmortem", "no postmortem draft"),
        (f"/deploys/{d['id']}/drafts/novel", "known: "),
        ("/deploys/nope/drafts/postmortem", "nope"),
    ):
        status, page, resp = await get_page(api, path)
        assert status in (400, 404) and resp.content_type == "text/html", path
        assert detail in page.one("p", cls="error-detail").text, path


async def test_no_grafana_link_unless_configured(api: Api) -> None:
    d = await api.mark(marker())
    _, page, _ = await get_page(api, f"/deploys/{d['id']}")
    assert not page.find_all("a", id="grafana")


class TestWithGrafana:
    @pytest.fixture
    def settings(self) -> Settings:
        base = make_settings()
        return make_settings(
            server={**base.server.model_dump(), "grafana_url": "https://grafana.example.test/"}
        )

    async def test_grafana_link_covers_the_deploy_in_milliseconds(self, api: Api) -> None:
        d = await api.mark(marker(service="check out&co"))
        await api.push(d["id"], window(0, 10))
        _, page, _ = await get_page(api, f"/deploys/{d['id']}")
        url = urlsplit(page.one("a", id="grafana").attrs["href"])
        assert f"{url.scheme}://{url.netloc}{url.path}" == "https://grafana.example.test/d/guardrail-canary"
        q = parse_qs(url.query)
        assert q["var-service"] == ["check out&co"]
        assert int(q["from"][0]) < T0 * 1000 < T0 * 1000 + WINDOW_S * 1000 < int(q["to"][0])


class TestPrivatePages:
    @pytest.fixture
    def settings(self) -> Settings:
        base = make_settings()
        return make_settings(server={**base.server.model_dump(), "pages_public": False})

    async def test_pages_need_a_token(self, api: Api) -> None:
        d = await api.mark(marker())
        for path in (f"/deploys/{d['id']}", "/deploys"):
            status, _, resp = await get_page(api, path)
            assert status == 401 and resp.content_type == "text/html", path
            assert resp.headers["WWW-Authenticate"].startswith("Bearer")
            status, _, _ = await get_page(api, path, Authorization="Bearer wrong")
            assert status == 401, path
            status, _, _ = await get_page(api, path, Authorization="Bearer tok-read-e0d94b")
            assert status == 200, path


async def test_openapi_documents_the_pages_as_html(api: Api) -> None:
    _, doc = await api.call("GET", "/api/v1/openapi.json", as_=None)
    page = doc["paths"]["/deploys/{id}"]["get"]
    assert "text/html" in page["responses"]["200"]["content"]
    assert "text/html" in page["responses"]["404"]["content"]
    assert "pages_public" in page["summary"]
    listing = doc["paths"]["/deploys"]["get"]
    assert {p["name"] for p in listing["parameters"]} >= {"service", "environment", "state"}


async def test_the_statistics_words_are_explained_for_on_call_next_to_the_evidence(api: Api) -> None:
    d = await regressed(api)
    _, page, _ = await get_page(api, f"/deploys/{d['id']}")
    glossary = page.one("dl", id="how-to-read")
    terms = {
        dt.text: dd.text for dt, dd in zip(glossary.find_all("dt"), glossary.find_all("dd"), strict=True)
    }
    assert set(terms) == {
        "ratio",
        "confidence sequence (CS)",
        "allowed",
        "critical",
        "e-value fail / pass",
        "continue, inconclusive",
    }
    assert "canary / baseline" in terms["ratio"] and "1 means no change" in terms["ratio"]
    assert "every look" in terms["confidence sequence (CS)"]  # why peeking each interval is fine
    assert "FAIL" in terms["allowed"] and "PASS" in terms["critical"]
    alpha = d["analysis"]["alpha"]
    assert f"α = {alpha:g}" in terms["e-value fail / pass"]
    assert "guardrail promote" in terms["continue, inconclusive"]  # what on-call can do about it
    headers = {th.text: th.attrs.get("title", "") for th in page.one("table", id="evidence").find_all("th")}
    assert all(headers[h] for h in ("ratio", "confidence sequence", "e-value fail / pass")), headers
