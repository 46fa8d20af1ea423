"""DM2 (previously active trouble codes, PGN 65227) on request: the bridge asks with Request PGN 59904 and
a peer ECU the test scripts answers with one frame or an RTS/CTS transfer to the bridge's address; the
answer is decoded like a DM1 into the bus status's ``dm2`` of that source, apart from its DM1."""

from __future__ import annotations

from pathlib import Path

from canbridge import FrameFlags
from canbridge.core.app import runtime_from_data
from canbridge.testing import BridgeHarness
from tests.core.test_j1939_transmit import CALLER, claimed, config

REQUEST_FROM_BRIDGE = 0x18EA0080
DM2 = 65227


def dtc(spn: int, fmi: int, oc: int) -> bytes:
    return bytes([spn & 0xFF, (spn >> 8) & 0xFF, ((spn >> 16) << 5) | fmi, oc])


async def test_a_dm2_request_answered_with_one_frame_is_kept_apart_from_dm1() -> None:
    async with BridgeHarness(config()) as h:
        await claimed(h)
        h.inject("18FECA00#0000000000000000")  # DM1 of the engine: no active code
        sent = await h.bridge.request_pgn("truck", DM2, CALLER, destination=0x00)
        assert (sent.can_id, sent.data) == (REQUEST_FROM_BRIDGE, bytes((0xCB, 0xFE, 0x00)))
        await h.next_sent(REQUEST_FROM_BRIDGE)
        h.inject("18FECB00#0400" + dtc(190, 2, 3).hex() + "FFFF")  # was active: SPN 190 FMI 2, 3 times
        await h.until(lambda: 0 in h.bridge.bus_status("truck").dm2)
        st = h.bridge.bus_status("truck")
        d = st.dm2[0]
        assert [(c.spn, c.fmi, c.occurrences) for c in d.dtcs] == [(190, 2, 3)]
        assert d.amber_warning == "on" and d.messages == 1
        assert st.dm1[0].dtcs == ()  # the DM1 is untouched


async def test_a_dm2_with_five_codes_by_rts_cts_to_our_address_is_decoded() -> None:
    codes = [(100, 1, 1), (110, 0, 2), (190, 2, 3), (524287, 31, 4), (84, 12, 126)]
    payload = bytes([0x40, 0xFF]) + b"".join(dtc(*c) for c in codes)  # MIL on; 22 bytes
    async with BridgeHarness(config()) as h:
        await claimed(h)
        await h.bridge.request_pgn("truck", DM2, CALLER, destination=0x03)
        await h.next_sent(0x18EA0380)  # to the transmission
        h.inject("1CEC8003#10160004FFCBFE00")  # RTS: 22 bytes, 4 packets, no CTS limit
        cts = await h.next_sent(0x1CEC0380)
        assert cts.data[0] == 17 and cts.data[2] == 1 and cts.data[5:] == bytes((0xCB, 0xFE, 0x00))
        for seq in range(1, cts.data[1] + 1):
            chunk = payload[(seq - 1) * 7:seq * 7].ljust(7, b"\xff")
            h.inject(f"1CEB8003#{seq:02X}{chunk.hex()}")
        if cts.data[1] < 4:  # the bridge's CTS window: ask for the rest
            cts = await h.next_sent(0x1CEC0380)
            for seq in range(cts.data[2], 5):
                chunk = payload[(seq - 1) * 7:seq * 7].ljust(7, b"\xff")
                h.inject(f"1CEB8003#{seq:02X}{chunk.hex()}")
        await h.until(lambda: 3 in h.bridge.bus_status("truck").dm2)
        d = h.bridge.bus_status("truck").dm2[3]
        assert [(c.spn, c.fmi, c.occurrences) for c in d.dtcs] == codes
        assert d.mil == "on"
        assert 3 not in h.bridge.bus_status("truck").dm1


async def test_a_second_dm2_answer_replaces_the_first() -> None:
    async with BridgeHarness(config()) as h:
        await claimed(h)
        h.inject("18FECB00#0000" + dtc(190, 2, 3).hex() + "FFFF")
        await h.until(lambda: 0 in h.bridge.bus_status("truck").dm2)
        h.inject("18FECB00#000000000000FFFF")  # previously active codes cleared (DM3 at the ECU)
        await h.until(lambda: h.bridge.bus_status("truck").dm2[0].messages == 2)
        assert h.bridge.bus_status("truck").dm2[0].dtcs == ()


DM2_DBC = '''VERSION ""
NS_ :
BS_:
BU_: Engine
BO_ 2566834944 DM2: 8 Engine
 SG_ AmberWarningLamp : 2|2@1+ (1,0) [0|3] "" Vector__XXX
BA_DEF_ BO_  "VFrameFormat" ENUM  "StandardCAN","ExtendedCAN","reserved","J1939PG";
BA_DEF_DEF_  "VFrameFormat" "J1939PG";
BA_ "VFrameFormat" BO_ 2566834944 3;
'''


def test_a_mapped_dm2_from_a_sender_heard_at_run_time_is_decoded_every_time(tmp_path: Path) -> None:
    """Regression: a heard sender's message was bound to the exact-id lookup, except DM1's; a DM2 that
    a DBC maps then reached the DM2 decoding once only, and the second answer was lost from ``dm2``."""
    dbc = tmp_path / "dm2.dbc"
    dbc.write_text(DM2_DBC)
    rt = runtime_from_data({"buses": [{"name": "truck", "interface": "virtual", "channel": "dm2heard"}],
                            "mappings": [{"bus": "truck", "dbc": str(dbc), "sources": {0x00: "engine"}}],
                            "state_dir": str(tmp_path)})
    ext = int(FrameFlags.EXTENDED)
    for n in (3, 4):
        rt.runners["truck"].on_frames([(0x18FECB21, ext, bytes([0x04, 0xFF]) + dtc(190, 2, n) + b"\xff\xff", n)])
    d = rt.bus_status("truck").dm2[0x21]
    assert d.messages == 2 and [(c.spn, c.occurrences) for c in d.dtcs] == [(190, 4)]
    assert rt.read("truck.sa0x21.DM2.AmberWarningLamp").value == 1  # and the heard sender's signal decodes
