"""Issue #9, finding 11: HEAD on GET routes answered 405 (monitoring tools probe with HEAD). Every GET
route: tests/security/test_rest.py::test_every_get_route_answers_head_as_get_does."""

from __future__ import annotations

import pytest

from tests.plugins.rest.conftest import OPEN, running


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics", "/api/v1/signals", "/", "/api/v1/openapi.json"])
async def test_head_is_answered(path: str) -> None:
    async with running(OPEN) as api, api.session.head(api.u(path)) as r:
        assert r.status == 200
