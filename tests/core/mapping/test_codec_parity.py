"""Every message of every real-world DBC in tests/data/dbc: generated decoders and encoders give
exactly cantools' values and bytes.

Where cantools itself cannot decode a frame (a multiplexer value without branch, overlapping
signals or signals outside the message in leniently loaded files), each decoded signal is checked
against cantools decoding a message that holds that signal alone, and the set of decoded signals
against the multiplexer path the payload selects.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cantools
import pytest
from cantools.database.can import Message, Signal

from canbridge.core.mapping.codec import compile_decoder, compile_encoder, fits
from canbridge.core.mapping.formats import load_dbc
from tests.core.mapping.cantools_helpers import decoded, encode_message, same

DBC_DIR = Path(__file__).resolve().parents[2] / "data" / "dbc"
LENIENT = {"FORD_CADS_64", "chrysler_cusw", "vw_mqb", "mazda_2017"}
FILES = sorted(p.stem for p in DBC_DIR.glob("*.dbc"))
PAYLOADS_PER_MESSAGE = 30


def test_all_test_dbcs_are_there() -> None:
    assert len(FILES) == 11 and set(FILES) >= LENIENT
    assert (DBC_DIR / "LICENSE-opendbc").exists()


def load(stem: str) -> list[Message]:
    return load_dbc(DBC_DIR / f"{stem}.dbc", strict=stem not in LENIENT)


class Reference:
    """cantools decoding one signal at a time (independent of the message's codec)."""

    def __init__(self, message: Message) -> None:
        self.message = message
        self.alone: dict[str, Message] = {}
        for s in message.signals:
            if not fits(s, message.length):
                continue
            copy = Signal(
                s.name,
                s.start,
                s.length,
                byte_order=s.byte_order,
                is_signed=s.is_signed,
                conversion=s.conversion,
            )
            self.alone[s.name] = Message(
                message.frame_id,
                message.name,
                message.length,
                [copy],
                is_extended_frame=message.is_extended_frame,
                strict=False,
            )

    def value(self, name: str, data: bytes) -> Any:
        return decoded(self.alone[name], data, decode_choices=False)[name]

    def path(self, tree: Sequence[Any], data: bytes) -> dict[str, Any]:
        """The signals cantools' tree selects for this payload, decoded one by one."""
        out: dict[str, Any] = {}
        for node in tree:
            if not isinstance(node, dict):
                if node in self.alone:
                    out[node] = self.value(node, data)
                continue
            for mux, branches in node.items():
                if mux not in self.alone:
                    continue
                out[mux] = self.value(mux, data)
                try:
                    key = int(out[mux])
                except (ValueError, OverflowError):
                    continue
                if key in branches:
                    out.update(self.path(branches[key], data))
        return out


def cantools_reliable(message: Message) -> bool:
    """Whether the message passes cantools' strict checks: with overlapping signals (lenient files)
    cantools' bitstruct formats are shifted and its bytes and values are wrong, or it raises."""
    try:
        Message(
            message.frame_id,
            message.name,
            message.length,
            message.signals,
            is_extended_frame=message.is_extended_frame,
            strict=True,
        )
    except cantools.database.errors.Error:
        return False
    return True


def payloads(message: Message, rng: random.Random) -> list[bytes]:
    """Random payloads, plus one per multiplexer id (multiplexer bits set to select it)."""
    out = [rng.randbytes(message.length) for _ in range(PAYLOADS_PER_MESSAGE)]
    for mux in (s for s in message.signals if s.is_multiplexer and fits(s, message.length)):
        ids = sorted(
            {i for s in message.signals if s.multiplexer_signal == mux.name for i in s.multiplexer_ids or []}
        )
        encoder = compile_encoder(message, mux)
        for mux_id in ids:
            try:
                raw = encoder.to_raw(mux_id)
            except ValueError:
                continue
            out.append(encoder.insert(rng.randbytes(message.length), raw))
            # nested multiplexers: encoding selects the parents' branches as well
            try:
                out.append(encode_message(message, {mux.name: mux_id}))
            except ValueError:
                pass
    return out


@pytest.mark.parametrize("stem", FILES)
def test_decode_parity(stem: str) -> None:
    rng = random.Random(stem)
    checked_with_cantools = checked_alone = 0
    for message in load(stem):
        indices = {s.name: i for i, s in enumerate(message.signals)}
        decoder = compile_decoder(message, indices)
        names = {i: n for n, i in indices.items()}
        reference = Reference(message)
        reliable = cantools_reliable(message)
        for data in payloads(message, rng):
            values: list[Any] = [None] * len(indices)
            changed: list[int] = []
            decoder(data, values, changed)
            got = {names[i]: values[i] for i in changed}
            try:
                if not reliable:
                    raise cantools.database.DecodeError("overlapping signals")
                want = decoded(message, data, decode_choices=False)
            except cantools.database.DecodeError:
                want = reference.path(message.signal_tree, data)
                checked_alone += 1
            else:
                checked_with_cantools += 1
            assert set(got) == set(want), (message.name, data.hex())
            bad = {k: (got[k], want[k]) for k in want if not same(got[k], want[k])}
            assert not bad, (message.name, data.hex(), bad)
    assert checked_with_cantools > 0
    if stem in ("vw_mqb", "FORD_CADS_64"):
        assert checked_alone > 0  # overlapping / out-of-message signals: cantools cannot decode


def _in_range(signal: Signal, rng: random.Random) -> float | int | None:
    low, high = signal.minimum, signal.maximum
    if low is None or high is None or not low < high:
        return None
    value = rng.uniform(low, high)
    return round(value) if isinstance(low, int) and isinstance(high, int) and rng.random() < 0.5 else value


@pytest.mark.parametrize("stem", FILES)
def test_encode_parity(stem: str) -> None:
    rng = random.Random(stem + "encode")
    compared = round_trips = 0
    for message in load(stem):
        indices = {s.name: i for i, s in enumerate(message.signals)}
        decoder = compile_decoder(message, indices)
        inside = [s for s in message.signals if fits(s, message.length)]
        reliable = cantools_reliable(message)
        for data in payloads(message, rng)[:10]:
            values: list[Any] = [None] * len(indices)
            decoder(data, values, [])
            physical = {s.name: v for s in inside if (v := values[indices[s.name]]) is not None}
            if any(isinstance(v, float) and not math.isfinite(v) for v in physical.values()):
                continue
            # 1. decoded values: encode(decode(x)) gives x's bits back, and cantools' bytes
            try:
                ours = encode_message(message, physical)
            except ValueError:
                # scale/offset rounding moved a value out of its bits; cantools refuses too
                if reliable:
                    with pytest.raises((OverflowError, ValueError, cantools.database.EncodeError)):
                        message.encode(physical, strict=False)
                continue
            again: list[Any] = [None] * len(indices)
            decoder(ours, again, [])
            for name, value in physical.items():
                assert same(again[indices[name]], value) or math.isclose(again[indices[name]], value), (
                    message.name,
                    name,
                    value,
                    again[indices[name]],
                )
            round_trips += 1
            if not reliable:
                continue
            try:
                want = message.encode(physical, strict=False)
            except Exception:
                continue  # cantools cannot encode this message (overlaps, unfit signals)
            assert ours == want, (message.name, physical)
            compared += 1
        # 2. random physical values within [min, max]: same bytes, or both refuse
        for _ in range(5):
            physical = {s.name: v for s in message.signals if (v := _in_range(s, rng)) is not None}
            full = {s.name: physical.get(s.name, 0) for s in message.signals}
            if not reliable or any(s.is_multiplexer for s in message.signals):
                continue  # a random multiplexer value rarely has a branch; covered above
            want_full: bytes | None
            ours_full: bytes | None
            try:
                want_full = message.encode(full, strict=False)
            except Exception:
                want_full = None
            try:
                ours_full = encode_message(message, full)
            except ValueError:
                ours_full = None
            if want_full is not None and ours_full is not None:
                assert ours_full == want_full, (message.name, full)
                compared += 1
            elif want_full is None:
                assert ours_full is None, (message.name, full)  # a value outside its bits: both refuse
            else:
                # we refuse only a float too large for float32, where cantools writes infinity
                assert any(s.is_float and s.length == 32 for s in message.signals), (message.name, full)
    assert compared > 0 and round_trips > 0
