"""Issue #9, finding 9: with anonymous writes on loopback (the demo), a page on any site could send a
frame with a text/plain POST (no CORS preflight). Variants: tests/security/test_rest.py."""

from __future__ import annotations

import pytest

from tests.plugins.rest.conftest import OPEN, running


@pytest.mark.parametrize(
    "headers",
    [
        {"Content-Type": "text/plain;charset=UTF-8", "Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"},
        {"Content-Type": "text/plain;charset=UTF-8"},  # an old browser that sends no Origin
        {"Content-Type": "application/json", "Origin": "http://evil.example"},  # were CORS to be bypassed
    ],
)
async def test_a_cross_site_form_post_sends_no_frame(headers: dict[str, str]) -> None:
    async with running(OPEN) as api:
        async with api.session.post(
            api.u("/api/v1/buses/demo/frames"), data=b'{"cansend": "123#DEADBEEF"}', headers=headers
        ) as r:
            assert r.status in (403, 415)
        with pytest.raises(TimeoutError):
            await api.h.next_sent(None, timeout=0.3)
