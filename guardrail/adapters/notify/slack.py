"""Post to a Slack channel through an incoming webhook: the summary, the evidence and the links.

``POST <webhook url>`` (the URL is the credential: a secret, shown by its host only) with::

    {"text": "<fallback for notifications>",
     "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": "<icon> *<summary>*\\n<text>"}},
                {"type": "section", "fields": [{"type": "mrkdwn", "text": "*<detail>*\\n<value>"}, ...]},
                {"type": "context", "elements": [{"type": "mrkdwn",
                    "text": "<service> · <environment> · deploy <id> · <rule> · <href|text> · ..."}]}]}

A trigger leads with its severity (``:rotating_light:`` page, ``:warning:`` ticket), a resolve with
``:white_check_mark: Resolved:``, an announcement with ``:mega:``. The fields section holds up to
ten of ``notice.details`` (left out when there are none). ``&``, ``<`` and ``>`` in notice text are
escaped as Slack requires. Slack answers 200 with the body ``ok``; anything else is a failure
(``invalid_payload``, ``channel_not_found``, ... are not retried; 429 and 5xx are).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Self

import aiohttp
from yarl import URL

from guardrail.adapters.notify import (
    HttpClient,
    check_http_url,
    check_timeout,
    fallback_summary,
    jsonable,
    parse_notifier_config,
    shorten,
)
from guardrail.domain.notifications import Notice, NoticeAction, Severity
from guardrail.ports import NotifyResult
from guardrail.secrets import secret_field, secret_values

MAX_SECTION = 3000  # characters of a section's text
MAX_FIELDS = 10
MAX_FIELD = 2000
ICONS = {
    Severity.PAGE: ":rotating_light:",
    Severity.TICKET: ":warning:",
    Severity.INFO: ":information_source:",
}


@dataclass(frozen=True, slots=True)
class SlackConfig:
    url: str = secret_field()  # https://hooks.slack.com/services/T.../B.../...
    timeout_s: float = 10.0  # per attempt

    def __post_init__(self) -> None:
        check_http_url(self.url, "url", secret=True)
        check_timeout(self.timeout_s)


def escape(text: str) -> str:
    """Text safe inside Slack mrkdwn (formatting such as ``*bold*`` still works)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _href(href: str) -> str:
    return href.replace("|", "%7C").replace(">", "%3E").replace("<", "%3C")


def _value(v: Any) -> str:
    v = jsonable(v)
    return v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)


class SlackNotifier:
    name = "slack"
    config_type: ClassVar[type[SlackConfig]] = SlackConfig

    def __init__(
        self,
        config: SlackConfig,
        *,
        session: aiohttp.ClientSession | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self._clock = clock
        url = URL(config.url)
        # The whole URL is the credential: redact it, its path and its query wherever they show.
        secrets = [*secret_values(config), url.path, url.raw_path, url.query_string]
        self._http = HttpClient(
            session=session, timeout_s=config.timeout_s, secrets=[s for s in secrets if s not in ("", "/")]
        )
        self._shown = f"Slack webhook at {url.host}"

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Self:
        return cls(parse_notifier_config(SlackConfig, config, name="slack"))

    def __repr__(self) -> str:
        return f"SlackNotifier({self.config!r})"

    async def close(self) -> None:
        await self._http.close()

    def message(self, notice: Notice) -> dict[str, Any]:
        summary = fallback_summary(notice)
        if notice.action is NoticeAction.RESOLVE:
            icon, head, plain = ":white_check_mark:", f"*Resolved:* {escape(summary)}", f"Resolved: {summary}"
        elif notice.action is NoticeAction.ANNOUNCE:
            icon, head, plain = ":mega:", f"*{escape(summary)}*", summary
        else:
            icon = ICONS[notice.severity]
            head = f"*{escape(summary)}*"
            plain = f"[{notice.severity.value}] {summary}"
        main = f"{icon} {head}"
        if notice.text:
            main += "\n" + escape(notice.text)
        blocks: list[dict[str, Any]] = [
            {"type": "section", "text": {"type": "mrkdwn", "text": shorten(main, MAX_SECTION)}}
        ]
        fields = [
            {"type": "mrkdwn", "text": shorten(f"*{escape(str(k))}*\n{escape(_value(v))}", MAX_FIELD)}
            for k, v in list(notice.details.items())[:MAX_FIELDS]
        ]
        if fields:
            blocks.append({"type": "section", "fields": fields})
        context = [escape(notice.service), escape(notice.environment)]
        if notice.deploy_id:
            context.append(f"deploy {escape(notice.deploy_id)}")
        if notice.rule:
            context.append(escape(notice.rule))
        context += [f"<{_href(link.href)}|{escape(link.text or link.href)}>" for link in notice.links]
        blocks.append(
            {
                "type": "context",
                "elements": [{"type": "mrkdwn", "text": shorten(" · ".join(context), MAX_SECTION)}],
            }
        )
        return {"text": shorten(plain, MAX_SECTION), "blocks": blocks}

    async def send(self, notice: Notice) -> NotifyResult:
        body = json.dumps(self.message(notice), separators=(",", ":"), ensure_ascii=False).encode()
        posted = await self._http.post(self.config.url, body, {"Content-Type": "application/json"})
        what = f"POST {self._shown}"
        if posted.ok and posted.body.strip() != "ok":
            return self._http.result(what, posted, ok=False, why=f"answered {posted.body[:100]!r}, not 'ok'")
        return self._http.result(what, posted)
