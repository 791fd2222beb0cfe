"""Takes secrets and sensitive values out of a facts object before it leaves guardrail (to an LLM).

:func:`redact_facts` returns a redacted copy (the input is not changed):

- the value of every mapping key named in ``fields`` (any depth, compared without case), and of
  keys that always name secrets (``password``, ``token``, ``api_key``, ``authorization``, ...),
  becomes ``"[redacted]"`` whatever it held;
- in every string (values and list items, at any depth) these are replaced by ``[redacted]``:
  the ``secret_values`` passed in (API tokens, notifier secrets; longest first), ``Bearer`` and
  ``Basic`` credentials, the value of ``password=`` / ``token=`` / ``secret=`` / ``api_key=`` pairs
  (also ``:`` with no space, and quoted values), AWS access key ids, GitHub tokens (``ghp_``,
  ``gho_``, ``ghs_``, ``ghu_``, ``ghr_``, ``github_pat_``), Slack tokens (``xox?-``), JSON web
  tokens, private key blocks, and long high-entropy runs: 32 or more hex digits, or 32 or more
  base64 characters mixing upper and lower case (and digits) that switch between them as often as
  random text does (CamelCase names and file paths do not; a random run is missed about once in
  500). Commit hashes given under a key ending in ``commit`` or ``sha`` stay, there and wherever
  else they are quoted.

Numbers, booleans and ``None`` are kept. Pure: no I/O.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from itertools import pairwise
from typing import Any

__all__ = ["ALWAYS_SENSITIVE", "REDACTED", "redact_facts", "redact_string"]

REDACTED = "[redacted]"

ALWAYS_SENSITIVE = frozenset({
    "password", "passwd", "secret", "token", "api_key", "apikey", "authorization", "private_key",
    "access_key", "secret_key", "client_secret", "routing_key", "webhook_secret",
})

_BEARER = re.compile(r"(?i)\b(bearer|basic)(\s+)[A-Za-z0-9\-._~+/]{8,}=*")
_PAIR = re.compile(
    r"(?i)\b([\w.-]*(?:password|passwd|pwd|token|secret|api[_-]?key|access[_-]?key|auth))"
    r"(\s*=\s*|:(?=\S)|\"?\s*:\s*(?=[\"']))"
    r"(\"[^\"]*\"|'[^']*'|[^\s,;&]+)"
)
_PRIVATE_KEY = re.compile(
    r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)", re.S
)
_AWS_KEY_ID = re.compile(r"\b(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AROA)[0-9A-Z]{16}\b")
_GITHUB = re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,})\b")
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*")
_SLACK = re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}\b")
_HEX_RUN = re.compile(r"(?<![A-Za-z0-9])[0-9a-fA-F]{32,}(?![A-Za-z0-9])")
_B64_RUN = re.compile(r"(?<![A-Za-z0-9+/_-])[A-Za-z0-9+/_-]{32,}={0,2}")
_COMMIT_HEX = re.compile(r"[0-9a-fA-F]{7,64}")


def _entropy(s: str) -> float:
    counts = Counter(s)
    n = len(s)
    return -sum(c / n * math.log2(c / n) for c in counts.values())


def _kind(c: str) -> str:
    return "u" if c.isupper() else "l" if c.islower() else "d" if c.isdigit() else "o"


def _looks_random(run: str) -> bool:
    """Random base64 mixes upper case, lower case and digits and switches between them at about two
    characters in three; identifiers in CamelCase and file paths switch far less often."""
    body = re.sub(r"[+/_=-]", "", run)
    if len(body) < 24 or not (any(c.isupper() for c in body) and any(c.islower() for c in body)):
        return False
    switches = sum(_kind(a) != _kind(b) for a, b in pairwise(body)) / (len(body) - 1)
    return switches >= 0.35 and _entropy(body) >= 3.8


def redact_string(text: str, secret_values: Iterable[str] = (), keep: Iterable[str] = ()) -> str:
    """``text`` with the secrets described in the module docstring replaced; strings in ``keep``
    (commit hashes) are not treated as high-entropy runs."""
    for s in sorted({s for s in secret_values if s}, key=len, reverse=True):
        text = text.replace(s, REDACTED)
    text = _PRIVATE_KEY.sub(REDACTED, text)
    text = _BEARER.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
    text = _PAIR.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
    text = _AWS_KEY_ID.sub(REDACTED, text)
    text = _GITHUB.sub(REDACTED, text)
    text = _SLACK.sub(REDACTED, text)
    text = _JWT.sub(REDACTED, text)
    kept = {k.lower() for k in keep}
    text = _HEX_RUN.sub(lambda m: m.group(0) if m.group(0).lower() in kept else REDACTED, text)
    return _B64_RUN.sub(lambda m: REDACTED if _looks_random(m.group(0)) else m.group(0), text)


def _commit_hashes(value: Any, out: set[str]) -> None:
    if isinstance(value, Mapping):
        for k, v in value.items():
            name = str(k).lower()
            if isinstance(v, str) and (name.endswith("commit") or name.endswith("sha")):
                if _COMMIT_HEX.fullmatch(v.strip()):
                    out.add(v.strip())
            else:
                _commit_hashes(v, out)
    elif isinstance(value, list | tuple):
        for v in value:
            _commit_hashes(v, out)


def redact_facts(
    facts: Mapping[str, Any], *, secret_values: Iterable[str] = (), fields: Iterable[str] = ()
) -> dict[str, Any]:
    """A copy of ``facts`` with sensitive fields and secret-looking strings replaced (see module)."""
    secrets = [s for s in secret_values if s]
    sensitive = ALWAYS_SENSITIVE | {f.lower() for f in fields}
    keep: set[str] = set()
    _commit_hashes(facts, keep)
    keep -= set(secrets)

    def walk(value: Any) -> Any:
        if isinstance(value, Mapping):
            return {
                k: (REDACTED if isinstance(k, str) and k.lower() in sensitive and value[k] is not None else walk(v))
                for k, v in value.items()
            }
        if isinstance(value, list | tuple):
            return [walk(v) for v in value]
        if isinstance(value, str):
            return redact_string(value, secrets, keep)
        return value

    return walk(facts)
