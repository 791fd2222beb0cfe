"""How Argo Rollouts turns a web-metric answer into an analysis result, modelled from its source so
tests can run the example AnalysisTemplates against guardrail's real route.

Upstream, argoproj/argo-rollouts at 9f8d111d8f8e3e88b6d7f8bbdf62fd3cd863ef9d:

- ``metricproviders/webmetric/webmetric.go`` ``Run`` / ``parseResponse``: a transport error or a
  status outside 200-299 is a measurement **Error**; a JSON body is searched with the metric's
  ``jsonPath`` (no value: Error), the value goes to ``evaluate.EvaluateResult``;
- ``utils/evaluate/evaluate.go`` ``EvaluateResult``: the conditions are expr-lang expressions over
  ``result``; failure wins; neither true is **Inconclusive**; a missing failureCondition means
  "not success"; an expression that does not compile or run is an Error;
- ``analysis/analysis.go`` (measurement bookkeeping and ``assessMetricStatus`` /
  ``assessMetricFailureInconclusiveOrError``) and ``utils/defaults/defaults.go``
  (``DefaultConsecutiveErrorLimit = 4``): Failed > failureLimit (default 0) fails the metric,
  Inconclusive > inconclusiveLimit (default 0) makes it Inconclusive (the rollout pauses),
  ConsecutiveError > consecutiveErrorLimit makes it Error (a background analysis in Error aborts
  the rollout), ConsecutiveSuccess >= consecutiveSuccessLimit (when > 0) makes it Successful;
  without ``count`` it keeps Running.

The expression evaluator covers the part of expr-lang (github.com/expr-lang/expr) the templates use:
string / number / bool / nil literals, ``result``, ``==``, ``!=``, ``in [...]``, ``not in``,
``!``/``not``, ``&&``/``and``, ``||``/``or`` and parentheses; anything else raises ``ExprError``
(as a compile error would make Argo's measurement an Error).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

SUCCESSFUL, FAILED, INCONCLUSIVE, ERROR, RUNNING = "Successful", "Failed", "Inconclusive", "Error", "Running"
DEFAULT_CONSECUTIVE_ERROR_LIMIT = 4


class ExprError(Exception):
    pass


_TOKEN = re.compile(
    r'\s*(?:(?P<str>"(?:[^"\\]|\\.)*")|(?P<num>\d+(?:\.\d+)?)|(?P<op>==|!=|\|\||&&|[!\[\](),])'
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_]*))"
)


def _tokens(text: str) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise ExprError(f"unexpected input at {text[pos:]!r}")
        pos = m.end()
        if m.group("str") is not None:
            out.append(("lit", json.loads(m.group("str"))))
        elif m.group("num") is not None:
            n = m.group("num")
            out.append(("lit", float(n) if "." in n else int(n)))
        elif m.group("op") is not None:
            out.append(("op", m.group("op")))
        else:
            name = m.group("name")
            words = {"and": "&&", "or": "||", "not": "not", "in": "in"}
            if name in words:
                out.append(("op", words[name]))
            elif name in ("true", "false"):
                out.append(("lit", name == "true"))
            elif name == "nil":
                out.append(("lit", None))
            else:
                out.append(("name", name))
    return out


class _Parser:
    def __init__(self, text: str, env: dict[str, Any]) -> None:
        self.toks = _tokens(text)
        self.i = 0
        self.env = env

    def peek(self) -> tuple[str, Any] | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self, op: str | None = None) -> tuple[str, Any]:
        tok = self.peek()
        if tok is None or (op is not None and tok != ("op", op)):
            raise ExprError(f"expected {op or 'a value'}, got {tok}")
        self.i += 1
        return tok

    def parse(self) -> Any:
        value = self.or_()
        if self.peek() is not None:
            raise ExprError(f"unexpected {self.peek()}")
        return value

    def or_(self) -> Any:
        left = self.and_()
        while self.peek() == ("op", "||"):
            self.take()
            right = self.and_()
            left = _bool(left) or _bool(right)
        return left

    def and_(self) -> Any:
        left = self.not_()
        while self.peek() == ("op", "&&"):
            self.take()
            right = self.not_()
            left = _bool(left) and _bool(right)
        return left

    def not_(self) -> Any:
        if self.peek() in (("op", "!"), ("op", "not")):
            self.take()
            return not _bool(self.not_())
        return self.compare()

    def compare(self) -> Any:
        left = self.primary()
        tok = self.peek()
        if tok == ("op", "=="):
            self.take()
            return _equal(left, self.primary())
        if tok == ("op", "!="):
            self.take()
            return not _equal(left, self.primary())
        if tok == ("op", "in"):
            self.take()
            return _contains(self.primary(), left)
        if tok == ("op", "not") and self.i + 1 < len(self.toks) and self.toks[self.i + 1] == ("op", "in"):
            self.take()
            self.take("in")
            return not _contains(self.primary(), left)
        return left

    def primary(self) -> Any:
        kind, value = self.take()
        if kind == "lit":
            return value
        if kind == "name":
            if value not in self.env:
                raise ExprError(f"unknown name {value}")
            return self.env[value]
        if value == "(":
            inner = self.or_()
            self.take(")")
            return inner
        if value == "[":
            items = []
            while self.peek() != ("op", "]"):
                items.append(self.or_())
                if self.peek() == ("op", ","):
                    self.take()
            self.take("]")
            return items
        raise ExprError(f"unexpected {value!r}")


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ExprError(f"expected bool, got {type(v).__name__}")
    return v


def _equal(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is b
    if isinstance(a, str) != isinstance(b, str):
        raise ExprError(f"invalid operation: == (mismatched types {type(a).__name__} and {type(b).__name__})")
    return bool(a == b)


def _contains(container: Any, item: Any) -> bool:
    if not isinstance(container, list):
        raise ExprError("in: right side is not an array")
    return any(
        _equal(item, c) for c in container if (c is None) == (item is None) or isinstance(c, type(item))
    )


def eval_condition(condition: str, result: Any) -> bool:
    """``evaluate.EvalCondition``: the expression over ``result``, which must give a bool."""
    value = _Parser(condition, {"result": result}).parse()
    if not isinstance(value, bool):
        raise ExprError(f"expected bool, but got {type(value).__name__}")
    return value


def evaluate_result(metric: dict[str, Any], result: Any) -> str:
    """``evaluate.EvaluateResult``."""
    success_cond, failure_cond = metric.get("successCondition", ""), metric.get("failureCondition", "")
    try:
        success = eval_condition(success_cond, result) if success_cond else False
        failure = eval_condition(failure_cond, result) if failure_cond else False
    except ExprError:
        return ERROR
    if not success_cond and not failure_cond:
        return SUCCESSFUL
    if success_cond and not failure_cond:
        failure = not success
    elif failure_cond and not success_cond:
        success = not failure
    if failure:
        return FAILED
    if not success:
        return INCONCLUSIVE
    return SUCCESSFUL


_JSONPATH = re.compile(r"^\{\$((?:\.[A-Za-z_][A-Za-z0-9_]*)*)\}$")


def measure(metric: dict[str, Any], status: int, body: bytes) -> tuple[str, Any]:
    """``webmetric.Run``: (measurement phase, the value found)."""
    if status < 200 or status >= 300:
        return ERROR, None
    try:
        doc = json.loads(body)
    except ValueError:
        return evaluate_result(metric, body.decode()), body.decode()
    path = metric["provider"]["web"].get("jsonPath") or "{$}"
    m = _JSONPATH.match(path)
    if m is None:
        raise AssertionError(f"jsonPath {path!r} is outside the {{$.a.b}} subset this model reads")
    value = doc
    for key in filter(None, m.group(1).split(".")):
        if not isinstance(value, dict) or key not in value:
            return ERROR, None  # "Could not find JSONPath in body"
        value = value[key]
    return evaluate_result(metric, value), value


@dataclass
class MetricRun:
    """One metric of an AnalysisRun: the measurements' bookkeeping and its assessed phase."""

    metric: dict[str, Any]
    count: int = 0
    failed: int = 0
    inconclusive: int = 0
    consecutive_error: int = 0
    consecutive_success: int = 0
    phase: str = RUNNING

    def add(self, phase: str) -> str:
        if self.phase != RUNNING:
            return self.phase  # a completed metric takes no more measurements
        if phase == SUCCESSFUL:
            self.count += 1
            self.consecutive_error = 0
            self.consecutive_success += 1
        elif phase == FAILED:
            self.failed += 1
            self.count += 1
            self.consecutive_error = 0
            self.consecutive_success = 0
        elif phase == INCONCLUSIVE:
            self.inconclusive += 1
            self.count += 1
            self.consecutive_error = 0
            self.consecutive_success = 0
        else:
            self.consecutive_error += 1
            self.consecutive_success = 0
        self.phase = self.assess()
        return self.phase

    def assess(self) -> str:
        m = self.metric
        phase = ""
        failure_limit = int(m.get("failureLimit", 0))
        if failure_limit >= 0 and self.failed > failure_limit:
            phase = FAILED
        if self.inconclusive > int(m.get("inconclusiveLimit", 0)):
            phase = INCONCLUSIVE
        if self.consecutive_error > int(m.get("consecutiveErrorLimit", DEFAULT_CONSECUTIVE_ERROR_LIMIT)):
            phase = ERROR
        if phase:
            return phase
        limit = int(m.get("consecutiveSuccessLimit", 0))
        if limit > 0 and self.consecutive_success >= limit:
            return SUCCESSFUL
        count = m.get("count")
        if count is None and "interval" not in m:
            count = 1  # Metric.EffectiveCount: no interval and no count measures once
        if count is not None and self.count >= int(count):
            if limit > 0:
                return INCONCLUSIVE if failure_limit >= 0 else FAILED
            return SUCCESSFUL
        return RUNNING
