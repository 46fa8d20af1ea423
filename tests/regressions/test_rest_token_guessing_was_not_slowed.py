"""Issue #9, finding 10: wrong bearer tokens were answered at 2,400/s from one address without any
slowdown. Now the address is refused with 429 and Retry-After once its burst is spent."""

from __future__ import annotations

from tests.plugins.rest.conftest import running

TOKENS = [{"name": "ops", "role": "admin", "token": "admin-token-0123456789abcdef"}]


async def test_wrong_tokens_from_one_address_end_in_429() -> None:
    async with running({"tokens": TOKENS}) as api:  # the defaults: a burst of 10
        statuses = [
            (await api.get("/api/v1/signals", headers={"Authorization": f"Bearer guess-{i}"}))[0] for i in range(30)
        ]
        assert statuses.count(401) == 10 and statuses[10:] == [429] * 20
        _, _, r = await api.get("/api/v1/buses", headers={"Authorization": "Bearer admin-token-0123456789abcdef"})
        assert r.status == 429 and int(r.headers["Retry-After"]) >= 1
