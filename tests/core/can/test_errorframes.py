"""classify_error_frame against linux/can/error.h: one test per error class."""

from __future__ import annotations

import pytest

from canbridge import BusState
from canbridge.core.can import errorframes as ef
from canbridge.core.can.errorframes import classify_error_frame


def data(**at: int) -> bytes:
    b = bytearray(8)
    for k, v in at.items():
        b[int(k[1:])] = v
    return bytes(b)


def test_constants_match_linux_error_h() -> None:
    assert (ef.CAN_ERR_TX_TIMEOUT, ef.CAN_ERR_LOSTARB, ef.CAN_ERR_CRTL, ef.CAN_ERR_PROT) == (1, 2, 4, 8)
    assert (ef.CAN_ERR_TRX, ef.CAN_ERR_ACK, ef.CAN_ERR_BUSOFF, ef.CAN_ERR_BUSERROR) == (
        0x10,
        0x20,
        0x40,
        0x80,
    )
    assert (ef.CAN_ERR_RESTARTED, ef.CAN_ERR_CNT) == (0x100, 0x200)
    assert (ef.CAN_ERR_CRTL_RX_WARNING, ef.CAN_ERR_CRTL_TX_WARNING) == (0x04, 0x08)
    assert (ef.CAN_ERR_CRTL_RX_PASSIVE, ef.CAN_ERR_CRTL_TX_PASSIVE, ef.CAN_ERR_CRTL_ACTIVE) == (
        0x10,
        0x20,
        0x40,
    )


def test_bus_off() -> None:
    info = classify_error_frame(ef.CAN_ERR_BUSOFF, data())
    assert info.state is BusState.BUS_OFF
    assert info.bus_off and not info.restarted
    assert "bus-off" in info.description


def test_flag_bits_in_can_id_are_ignored() -> None:
    assert classify_error_frame(0x20000000 | ef.CAN_ERR_BUSOFF, data()).state is BusState.BUS_OFF


def test_restarted_returns_to_active() -> None:
    info = classify_error_frame(ef.CAN_ERR_RESTARTED, data())
    assert info.state is BusState.ACTIVE
    assert info.restarted and not info.bus_off
    assert "restarted" in info.description


@pytest.mark.parametrize(
    ("bits", "state", "text"),
    [
        (ef.CAN_ERR_CRTL_RX_WARNING, BusState.WARNING, "error-warning (RX"),
        (ef.CAN_ERR_CRTL_TX_WARNING, BusState.WARNING, "error-warning (TX"),
        (ef.CAN_ERR_CRTL_RX_PASSIVE, BusState.PASSIVE, "error-passive (RX"),
        (ef.CAN_ERR_CRTL_TX_PASSIVE, BusState.PASSIVE, "error-passive (TX"),
        (ef.CAN_ERR_CRTL_TX_PASSIVE | ef.CAN_ERR_CRTL_RX_WARNING, BusState.PASSIVE, "error-passive"),
        (ef.CAN_ERR_CRTL_ACTIVE, BusState.ACTIVE, "error-active"),
        (ef.CAN_ERR_CRTL_RX_OVERFLOW, None, "RX buffer overflow"),
        (ef.CAN_ERR_CRTL_TX_OVERFLOW, None, "TX buffer overflow"),
        (ef.CAN_ERR_CRTL_UNSPEC, None, "unspecified"),
    ],
)
def test_controller_states(bits: int, state: BusState | None, text: str) -> None:
    info = classify_error_frame(ef.CAN_ERR_CRTL, data(d1=bits))
    assert info.state is state
    assert text in info.description
    assert not info.bus_off


def test_error_counters() -> None:
    info = classify_error_frame(ef.CAN_ERR_CRTL | ef.CAN_ERR_CNT, data(d1=ef.CAN_ERR_CRTL_TX_PASSIVE, d6=130, d7=5))
    assert info.state is BusState.PASSIVE
    assert (info.tx_error_counter, info.rx_error_counter) == (130, 5)
    assert "TEC 130, REC 5" in info.description


def test_no_counters_without_cnt_class() -> None:
    info = classify_error_frame(ef.CAN_ERR_CRTL, data(d1=ef.CAN_ERR_CRTL_RX_WARNING, d6=99, d7=99))
    assert info.tx_error_counter is None and info.rx_error_counter is None


def test_protocol_violation_type_and_location() -> None:
    info = classify_error_frame(ef.CAN_ERR_PROT | ef.CAN_ERR_BUSERROR, data(d2=0x04 | 0x80, d3=0x08))
    assert info.state is None
    assert "bit stuffing error" in info.description
    assert "error on transmission" in info.description
    assert "CRC sequence" in info.description
    assert "bus error" in info.description


def test_protocol_violation_unspecified() -> None:
    assert "protocol violation: unspecified" in classify_error_frame(ef.CAN_ERR_PROT, data()).description


def test_lost_arbitration_bit() -> None:
    info = classify_error_frame(ef.CAN_ERR_LOSTARB, data(d0=7))
    assert info.state is None
    assert "lost arbitration at bit 7" in info.description


def test_no_ack() -> None:
    info = classify_error_frame(ef.CAN_ERR_ACK, data())
    assert "no ACK" in info.description
    assert info.state is None


def test_tx_timeout() -> None:
    assert "transmit timeout" in classify_error_frame(ef.CAN_ERR_TX_TIMEOUT, data()).description


def test_transceiver() -> None:
    info = classify_error_frame(ef.CAN_ERR_TRX, data(d4=0x70))
    assert "CANL short to GND" in info.description
    assert "status 0x33" in classify_error_frame(ef.CAN_ERR_TRX, data(d4=0x33)).description


def test_bus_off_wins_over_controller_state_in_the_same_frame() -> None:
    info = classify_error_frame(
        ef.CAN_ERR_BUSOFF | ef.CAN_ERR_CRTL | ef.CAN_ERR_CNT, data(d1=ef.CAN_ERR_CRTL_TX_PASSIVE, d6=255)
    )
    assert info.state is BusState.BUS_OFF
    assert info.tx_error_counter == 255


def test_short_data_and_unknown_bits() -> None:
    info = classify_error_frame(ef.CAN_ERR_CRTL | ef.CAN_ERR_CNT | 0x400, b"")
    assert info.state is None  # controller byte missing: unspecified
    assert (info.tx_error_counter, info.rx_error_counter) == (0, 0)
    assert "unknown error class bits 0x400" in info.description


def test_empty_class() -> None:
    info = classify_error_frame(0, data())
    assert info.state is None
    assert info.description == "error frame without error class"
    assert info.error_class == 0
