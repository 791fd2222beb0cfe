"""aiohttp's access log with secrets taken out: token-like query parameters (a Flagger webhook URL
or a browser may carry ``?token=``) and every configured secret, in the request line, the Referer,
the User-Agent and the structured ``extra`` fields alike (the format is aiohttp's default)."""

from __future__ import annotations

from typing import Any, ClassVar

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_log import AccessLogger
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse

from guardrail.redaction import Redactor


class RedactingAccessLogger(AccessLogger):
    """:class:`aiohttp.web_log.AccessLogger` whose every value is redacted before it is logged."""

    redactor: ClassVar[Redactor] = Redactor(())

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        try:
            values: list[Any] = []
            extra: dict[str, Any] = {}
            for key, value in self._format_line(request, response, time):
                if isinstance(value, str):
                    value = self.redactor.line(value)
                values.append(value)
                if isinstance(key, str):
                    extra[key] = value
                else:
                    extra.setdefault(key[0], {})[key[1]] = value
            self.logger.info(self._log_format % tuple(values), extra=extra)
        except Exception:
            self.logger.exception("Error in logging")


def access_logger(redactor: Redactor) -> type[AbstractAccessLogger]:
    """The access logger class for ``web.run_app(access_log_class=...)`` redacting with ``redactor``."""
    return type("RedactingAccessLogger", (RedactingAccessLogger,), {"redactor": redactor})
