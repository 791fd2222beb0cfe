"""redact_facts: sensitive fields and secret-looking strings never leave, everything else does."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guardrail.domain.drafts.redact import REDACTED, redact_facts, redact_string

COMMIT = "3f2c9e1b7a6d5c4b3a291817161514131211100f"


def test_configured_fields_are_redacted_at_any_depth_whatever_they_hold():
    facts = {
        "deploy": {"Author": "dana", "changes": [{"author": {"name": "x"}}], "service": "checkout"},
        "owner": ["a", "b"],
    }
    out = redact_facts(facts, fields=["author", "OWNER"])
    assert out == {
        "deploy": {"Author": REDACTED, "changes": [{"author": REDACTED}], "service": "checkout"},
        "owner": REDACTED,
    }


def test_keys_that_always_name_secrets_are_redacted_without_configuration():
    out = redact_facts({"a": {"password": "p", "api_key": "k", "token": None, "tokens_used": 4}})
    assert out == {"a": {"password": REDACTED, "api_key": REDACTED, "token": None, "tokens_used": 4}}


def test_known_secret_values_are_scrubbed_from_every_string():
    facts = {"x": ["called with gr-tok-1234567 and gr-tok-1234567-long"], "y": {"z": "gr-tok-1234567"}}
    out = redact_facts(facts, secret_values=["gr-tok-1234567", "gr-tok-1234567-long", ""])
    assert out == {"x": [f"called with {REDACTED} and {REDACTED}"], "y": {"z": REDACTED}}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Authorization: Bearer abc123def456ghi789", f"Authorization: Bearer {REDACTED}"),
        ("curl -H 'Authorization: Basic dXNlcjpwYXNzd29yZA=='", f"curl -H 'Authorization: Basic {REDACTED}'"),
        ("db password=hunter2 user=app", f"db password={REDACTED} user=app"),
        ("DB_PASSWORD = s3cr3t; next", f"DB_PASSWORD = {REDACTED}; next"),
        ("url?token=abc&x=1", f"url?token={REDACTED}&x=1"),
        ("client_secret:xyz987 done", f"client_secret:{REDACTED} done"),
        ('config {"api_key": "sk-live-1"}', f'config {{"api_key": {REDACTED}}}'),
        ("secret='two words'", f"secret={REDACTED}"),
        ("key AKIAIOSFODNN7EXAMPLE used", f"key {REDACTED} used"),
        ("ghp_" + "a1B2" * 9 + " pushed", f"{REDACTED} pushed"),
        ("github_pat_11ABCDEFG0abcdefghijkl_mnopqrstuv", REDACTED),
        ("slack xoxb-1234567890-abcdefghij", f"slack {REDACTED}"),
        ("-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIB\nAAKCAQEA\n-----END RSA PRIVATE KEY----- after",
         f"{REDACTED} after"),
        ("key: -----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA", f"key: {REDACTED}"),
        (f"hash {COMMIT} elsewhere", f"hash {REDACTED} elsewhere"),
        ("blob x9Kd83JdlQ0pZ7wEr4TyU1iOp2AsDf5GhJ", f"blob {REDACTED}"),
        ("jwt eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.sig",
         f"jwt {REDACTED}"),
    ],
)
def test_secret_looking_strings_are_scrubbed(text: str, expected: str):
    assert redact_string(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "canary error rate 1.09% vs baseline 0.23% (ratio 4.74, 98.52% CS 1.24-14) after 1,289 requests",
        "deploy 6f1c2a90-3b7d-4c11-9e0f-2a4b6c8d0e1f of checkout 1.4.3 at 2023-11-14T22:13:20Z",
        "/Users/JohnSmith/Projects/guardrail2/src/main.py and CheckoutServiceProductionCanaryRelease2024",
        "http://127.0.0.1:8080/deploys/0000000000000002 commit c41d7e0",
        "the author of the token rotation runbook",
        "Bearer tokens are checked",
    ],
)
def test_ordinary_text_is_left_alone(text: str):
    assert redact_string(text) == text


def test_a_commit_hash_in_a_commit_field_stays_there_and_where_it_is_quoted():
    facts = {"deploy": {"commit": COMMIT, "previous_sha": "0123456789abcdef0123456789abcdef01234567"},
             "timeline": [f"deployed {COMMIT}", "0123456789abcdef0123456789abcdef01234567 before"],
             "other": "ffeeddccbbaa99887766554433221100ffeeddcc"}
    out = redact_facts(facts)
    assert out["deploy"] == facts["deploy"]
    assert out["timeline"] == facts["timeline"]
    assert out["other"] == REDACTED


def test_a_commit_field_holding_a_configured_secret_is_still_scrubbed():
    out = redact_facts({"commit": COMMIT, "note": f"x {COMMIT}"}, secret_values=[COMMIT])
    assert out == {"commit": REDACTED, "note": f"x {REDACTED}"}


def test_numbers_booleans_and_the_input_are_untouched():
    facts: dict[str, Any] = {"n": 3, "r": 0.0213, "ok": True, "none": None, "l": [1, 2.5], "s": "password=x"}
    before = copy.deepcopy(facts)
    out = redact_facts(facts)
    assert facts == before
    assert out == {**before, "s": f"password={REDACTED}"}
    json.dumps(out)


def _strings(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [*value, *(s for v in value.values() for s in _strings(v))]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [value] if isinstance(value, str) else []


secret_text = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_", min_size=6, max_size=40)
json_leaf = st.one_of(st.integers(), st.floats(allow_nan=False), st.booleans(), st.none(), st.text(max_size=30))


@settings(max_examples=150, deadline=None)
@given(
    secret_text,
    st.recursive(
        json_leaf,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4), st.dictionaries(st.text(alphabet="abcdefgh", max_size=8), inner, max_size=4)
        ),
        max_leaves=20,
    ),
    st.text(max_size=20),
    st.text(max_size=20),
)
def test_a_planted_secret_never_survives_anywhere(secret: str, tree: Any, before: str, after: str):
    facts = {"tree": tree, "planted": [f"{before}{secret}{after}"], "again": {"deep": [[secret]]}}
    out = redact_facts(facts, secret_values=[secret])
    assert [s for s in _strings(out) if secret in s] == []  # numbers are kept as they are, by design


@settings(max_examples=100, deadline=None)
@given(st.recursive(json_leaf, lambda inner: st.lists(inner, max_size=4), max_leaves=15))
def test_redacting_twice_changes_nothing_more(tree: Any):
    once = redact_facts({"t": tree})
    assert redact_facts(once) == once
