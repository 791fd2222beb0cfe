"""Routes of this part of the API (added to the app's table by `guardrail.adapters.http.app`)."""

from __future__ import annotations

from guardrail.adapters.http.routes import Route

INTEGRATION_ROUTES: tuple[Route, ...] = ()
