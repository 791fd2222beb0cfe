"""check_answer: the title, the required sections in order, and no figure the facts do not support
(with the usual conversions), while numbering, versions, hashes and known times are not figures."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guardrail.adapters.drafts.offline import TEMPLATES, OfflineDrafter
from guardrail.domain.drafts import DOCS, DraftKind
from guardrail.domain.drafts.check import check_answer, supported
from guardrail.domain.drafts.facts import build_facts
from tests.drafts.record import NAMES, load

COMPLETION = DraftKind.COMPLETION


def doc(body: str = "", *, title: str = "# Deploy completion update: checkout 1.4.3") -> str:
    """A completion update with its three sections and ``body`` under the first."""
    return f"{title}\n\n## Result\n{body}\n\n## Measured\nsee above\n\n## Next\n[owner]\n"


@pytest.fixture(scope="module")
def recorded() -> dict[str, dict[str, Any]]:
    out = {}
    for name in NAMES:
        deploy, events, actions, samples = load(name)
        out[name] = build_facts(deploy, events, actions, samples, public_url="http://127.0.0.1:8080")
    return out


# --- the offline rendering and an invented figure -------------------------------------------------


@pytest.mark.parametrize("kind", list(DraftKind))
@pytest.mark.parametrize("name", NAMES)
def test_the_offline_rendering_of_a_recorded_deploy_passes(recorded: dict[str, Any], name: str, kind: DraftKind):
    if not (TEMPLATES / f"{kind.value}.md.j2").exists():
        pytest.skip(f"the offline drafter has no template for {kind.value} yet")
    markdown = OfflineDrafter().render(kind, recorded[name])
    assert check_answer(kind, markdown, recorded[name]) == []


def test_an_invented_percentage_in_the_offline_rendering_fails(recorded: dict[str, Any]):
    facts = recorded["promoted"]
    markdown = OfflineDrafter().render(COMPLETION, facts).replace("## Next\n", "## Next\n\nErrors fell by 4.7%.\n")
    assert check_answer(COMPLETION, markdown, facts) == ["figure '4.7%' does not appear in the facts"]


# --- title and sections ---------------------------------------------------------------------------


def test_a_complete_answer_passes():
    assert check_answer(COMPLETION, doc(), {}) == []


def test_an_answer_without_a_title_line_fails():
    assert check_answer(COMPLETION, doc().split("\n", 1)[1], {}) == [
        "the answer does not start with a '# ' title line"
    ]


def test_a_preamble_before_the_title_fails():
    assert "the answer does not start with a '# ' title line" in check_answer(
        COMPLETION, "Here is your document:\n\n" + doc(), {}
    )


def test_each_missing_section_is_named():
    text = "# T\n\n## Result\nok\n"
    assert check_answer(COMPLETION, text, {}) == ["missing section 'Measured'", "missing section 'Next'"]


def test_sections_out_of_order_fail():
    text = "# T\n\n## Measured\nx\n\n## Result\ny\n\n## Next\nz\n"
    problems = check_answer(COMPLETION, text, {})
    assert len(problems) == 1
    assert problems[0].startswith("section 'Measured' is out of order")


def test_extra_sections_and_heading_decoration_are_accepted():
    text = "# T\n\n## 1. Result:\nx\n\n## Notes\nn\n\n## **Measured**\ny\n\n## next\nz\n"
    assert check_answer(COMPLETION, text, {}) == []


def test_a_heading_inside_a_code_block_does_not_count():
    text = "# T\n\n## Result\n```\n## Measured\n```\n\n## Next\nz\n"
    assert check_answer(COMPLETION, text, {}) == ["missing section 'Measured'"]


@pytest.mark.parametrize("kind", list(DraftKind))
def test_every_kind_accepts_its_own_sections(kind: DraftKind):
    text = f"# {DOCS[kind].title}\n\n" + "".join(f"## {s}\n[to fill]\n\n" for s in DOCS[kind].sections)
    assert check_answer(kind, text, {}) == []


# --- figures: conversions -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fact", "shown"),
    [
        (0.0213, "2.13%"),  # ratio -> percent
        (0.0213, "2.1%"),  # rounded to the shown precision
        ("2.13%", "0.0213"),  # percent -> ratio
        (2.13, "2.13%"),  # already in percent
        (300, "5 min"),  # seconds -> minutes
        (300, "300 s"),
        (0.412, "412 ms"),  # seconds -> milliseconds
        ("412 ms", "0.41 s"),  # milliseconds -> seconds
        (412.0, "412 ms"),  # a bare number read in the text's unit
        (5400, "1.5 hours"),
        (28711, "28,711"),  # thousands separators
        ("28,711 requests", "28711"),
        (28711, "28.7k"),
        (4.74, "4.74x"),
        (4.74, "4.7×"),
        (-0.12, "+12%"),  # signs are ignored
        (412, "about 400 ms"),  # "about": read at its significant digits
    ],
)
def test_a_figure_supported_after_the_usual_conversions_passes(fact: Any, shown: str):
    assert check_answer(COMPLETION, doc(f"It was {shown} then."), {"x": {"y": [fact]}}) == []


@pytest.mark.parametrize(
    ("fact", "shown"),
    [
        (0.0213, "2.2%"),
        (300, "6 min"),
        (0.412, "420 ms"),
        (412, "400 ms"),  # without "about" 400 means 400
        (28711, "28,712"),
        ("2.13%", "0.03"),
    ],
)
def test_a_figure_that_no_conversion_supports_fails(fact: Any, shown: str):
    problems = check_answer(COMPLETION, doc(f"It was {shown} then."), {"x": fact})
    assert problems == [f"figure '{shown.removeprefix('about ')}' does not appear in the facts"]


def test_numbers_inside_fact_strings_count():
    facts = {"detail": "canary p99 395 ms vs baseline 331 ms (ratio 2.66) after 808 requests"}
    assert check_answer(COMPLETION, doc("p99 395 ms against 331 ms, 2.66x, 808 requests."), facts) == []


def test_each_unsupported_figure_is_reported_once_in_order():
    problems = check_answer(COMPLETION, doc("9.9% then 8 s then 9.9% again"), {})
    assert problems == ["figure '9.9%' does not appear in the facts", "figure '8 s' does not appear in the facts"]


# --- figures: what is not a figure -----------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "1. first\n2. second\n10) tenth",  # list numbering
        "- [ ] 3. unticked numbered item",
        "| 4 | an action item | | |",  # a table's numbering column
        "Deploy v2.10.3 replaces 1.4.2 (build 1.4.3-rc.1).",  # versions
        "Commit c41d7e0 and 3f2c9e1b7a6d5c4b3a29 are hashes.",
        "Step 2 of the rollout, attempt 3, phase 4, item #5, see [6].",
        "HTTP 503 and status code 502 responses, 5xx, p99, v1, the 2nd try.",
        "Watch for 24 hours; the 30 minutes after promotion matter most.",  # the process's own figures
        "See http://127.0.0.1:9090/graph?g0.range_input=17m and 10.0.0.7:8080.",
        "Run `sleep 77` then:\n```sql\nALTER TABLE t ADD COLUMN c VARCHAR(255);\n```",
        "Zero, one: 0 errors, 1 step, 100% of traffic.",
    ],
)
def test_numbering_versions_hashes_codes_and_process_figures_are_not_checked(text: str):
    assert check_answer(COMPLETION, doc(text), {}) == []


def test_dates_and_times_must_be_in_the_facts():
    facts = {"at": "2023-11-14T22:13:50Z", "started": 1_699_999_999.0}
    ok = "At 2023-11-14 22:13:50 UTC (22:13), started 2023-11-14T22:13:19Z."
    assert check_answer(COMPLETION, doc(ok), facts) == []
    assert check_answer(COMPLETION, doc("At 2023-11-15 and 09:45."), facts) == [
        "figure '2023-11-15' does not appear in the facts",
        "figure '09:45' does not appear in the facts",
    ]


def test_an_elapsed_time_is_supported_by_seconds_in_the_facts():
    assert check_answer(COMPLETION, doc("| T+0:30 | verdict | and T+1:02:03"), {"a": 30.0, "b": 3723}) == []
    assert supported("at T+0:45", {"a": 30.0}) == ["0:45"]


# --- properties -----------------------------------------------------------------------------------

ratios = st.floats(min_value=1e-4, max_value=0.9999, allow_nan=False)
seconds = st.floats(min_value=0.001, max_value=86_400, allow_nan=False)
counts = st.integers(min_value=2, max_value=10**9)


@settings(max_examples=150, deadline=None)
@given(ratios, seconds, counts, st.integers(0, 3), st.sampled_from(["ms", "s", "min"]))
def test_any_rendering_of_the_facts_at_any_precision_passes(r: float, s: float, n: int, digits: int, unit: str):
    per = {"ms": 0.001, "s": 1.0, "min": 60.0}[unit]
    facts = {"error_ratio": r, "latency": {"p99_s": s}, "requests": [n]}
    text = doc(f"Errors {100 * r:.{digits}f}% over {n:,} requests; p99 {s / per:.{digits}f} {unit}.")
    assert check_answer(COMPLETION, text, facts) == []


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.integers(2, 60), min_size=1, max_size=8),
    st.sampled_from(["{}", "{}%", "{} ms", "{}s"]),
    st.integers(1, 500),
    st.sampled_from(["%", " s", " ms", " min", ""]),
)
def test_a_figure_between_every_fact_and_its_conversions_always_fails(
    values: list[int], fmt: str, whole: int, unit: str
):
    """Facts are whole numbers from 2 to 60 (bare or as "N%" / "N ms" strings); "X.5<unit>" lies half a
    unit away from each of them under every conversion, so it is always reported."""
    facts = {"figures": [fmt.format(v) if fmt != "{}" else v for v in values]}
    shown = f"{whole}.5{unit}"
    assert check_answer(COMPLETION, doc(f"It was {shown}."), facts) == [
        f"figure '{shown}' does not appear in the facts"
    ]
