"""Issue #9, finding 12: ``123#R٣`` was sent as ``123#R3``, ``123#R²`` gave a 500, ``12\\n#00`` was sent
as ``012#00`` and ``{"err": true}`` went out as a data frame; ``200#16 2D AA FF`` was refused."""

from __future__ import annotations

import json

import pytest

from canbridge import FrameFormatError, parse_frame
from tests.plugins.rest.conftest import OPEN, running


@pytest.mark.parametrize("bad", ["123#R\u0663", "123#R\u00b2", "12\n#00", "123#00\n", {"canid": 0x123, "err": True}])
def test_refused_by_the_parser(bad: object) -> None:
    with pytest.raises(FrameFormatError):
        parse_frame(bad)


def test_spaces_between_bytes_are_accepted() -> None:
    assert parse_frame("200#16 2D AA FF").data == bytes.fromhex("162DAAFF")


@pytest.mark.parametrize("bad", ["123#R\u0663", "123#R\u00b2", "12\n#00", {"canid": 0x123, "err": True}])
async def test_refused_by_the_api_and_nothing_sent(bad: object) -> None:
    async with running(OPEN) as api:
        status, got, _ = await api.post(
            "/api/v1/buses/demo/frames", data=json.dumps(bad), headers={"Content-Type": "application/json"}
        )
        assert status == 400 and got["error"] == "invalid_frame"
        with pytest.raises(TimeoutError):
            await api.h.next_sent(None, timeout=0.3)
