"""Pieces of the OPC UA plugin on their own: configuration errors, hashes, units, data types, and the
status codes for every quality and refusal reason (against a fake bridge that refuses on demand)."""

from __future__ import annotations

import argparse
import io
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from asyncua import ua
from asyncua.client.client import Client
from canbridge_opcua import plugin
from canbridge_opcua.config import OpcUaConfig, hash_password, verify_password
from canbridge_opcua.nodes import variant_type
from canbridge_opcua.service import OpcUaService
from canbridge_opcua.units import unece_unit
from pydantic import ValidationError

import canbridge
from canbridge import Quality, RefusalReason
from canbridge.testing import FakeBridge, eventually, signal_info, until
from tests.plugins.opcua.conftest import small_table, status_name
from tests.plugins.opcua.uatypes import (
    AttributeIds,
    ObjectIds,
    StatusCodes,
    UaStatusCodeError,
    dv_status,
    dv_value,
    nid,
)

HASH = hash_password("pw", iterations=10_000)


# --- configuration ------------------------------------------------------------------------------


def cfg(**kw: Any) -> OpcUaConfig:
    base: dict[str, Any] = {"users": {"u": {"password_hash": HASH, "role": "operator"}}}
    base.update(kw)
    return OpcUaConfig.model_validate(base)


def test_defaults_are_secure() -> None:
    c = cfg()
    assert c.listen == "opc.tcp://127.0.0.1:4840"
    assert "None" not in c.security_policies
    assert set(c.security_policies) == {"Basic256Sha256", "Aes128_Sha256_RsaOaep", "Aes256_Sha256_RsaPss"}
    assert c.security_modes == ["Sign", "SignAndEncrypt"]
    assert not c.allow_anonymous
    assert c.namespace_uri == "urn:canbridge"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"generate_certificate": False}, "need a certificate"),
        ({"certificate": "/x/cert.der"}, "both 'certificate' and 'private_key'"),
        ({"users": {"u": {"password_hash": HASH, "role": "admin"}}}, "'read' or 'operator'"),
        ({"users": {"u": {"password_hash": "secret", "role": "read"}}}, "clear-text passwords"),
        ({"users": {"u": {"password_hash": hash_password("x", iterations=1000)}}}, "fewer than 10000"),
        ({"users": {}}, "no one can log in"),
        ({"listen": "tcp://127.0.0.1:4840"}, "opc.tcp://"),
        ({"listen": "opc.tcp://127.0.0.1"}, "has no port"),
        ({"listen": "opc.tcp://127.0.0.1:99999"}, "0 to 65535"),
        ({"listen": "opc.tcp://bad host!:4840"}, "neither an IP address nor a host name"),
        ({"security_policies": []}, "at least 1"),
        ({"security_policies": ["Basic128Rsa15"]}, "Basic256Sha256"),
        ({"security_policies": ["None", "None"]}, "listed twice"),
        ({"security_modes": ["None"]}, "SignAndEncrypt"),
        ({"listne": "opc.tcp://127.0.0.1:4840"}, "Extra inputs"),
        ({"security_policies": ["None"]}, "passwords would travel in clear text"),
        ({"limits": {"max_chunk_size": 1000}}, "greater than or equal to 8192"),
        ({"limits": {"max_connections": 5, "max_connections_per_address": 6}}, "larger than max_connections"),
        ({"limits": {"max_sessions": 5}}, "Extra inputs"),
    ],
)
def test_configuration_errors(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as err:
        cfg(**overrides)
    assert message in str(err.value)


def test_none_only_needs_no_certificate() -> None:
    c = cfg(security_policies=["None"], generate_certificate=False, allow_anonymous=True, users={})
    assert c.security_policies == ["None"]


def test_demo_config_is_valid_and_loopback() -> None:
    c = OpcUaConfig.model_validate(plugin.DEMO_CONFIG)
    assert c.host == "127.0.0.1"
    assert c.allow_anonymous and "None" in c.security_policies


def test_password_hashes() -> None:
    h = hash_password("correct horse", iterations=10_000)
    assert h.startswith("pbkdf2_sha256$10000$")
    assert verify_password("correct horse", h)
    assert not verify_password("correct horsE", h)
    assert not verify_password("x", "garbage")
    assert hash_password("a", iterations=10_000) != hash_password("a", iterations=10_000)  # salted


def test_passwd_command(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    commands: list[Any] = []
    plugin.register_commands(commands.append)
    (cmd,) = commands
    assert cmd.name == "opcua-passwd"
    parser = argparse.ArgumentParser()
    cmd.configure(parser)
    monkeypatch.setattr("sys.stdin", io.StringIO("s3cret\n"))
    assert cmd.run(parser.parse_args(["--password-stdin", "--iterations", "10000"])) == 0
    out = capsys.readouterr().out.strip()
    assert verify_password("s3cret", out)
    cfg(users={"u": {"password_hash": out}})  # what it prints is accepted by the configuration


def test_register_northbound() -> None:
    got: list[Any] = []
    plugin.register_northbound(got.append)
    (nb,) = got
    assert nb.name == "opcua" and nb.config_model is OpcUaConfig and nb.demo_config == plugin.DEMO_CONFIG


# --- units and types ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("unit", "code"),
    [
        ("rpm", "RPM"),
        ("degC", "CEL"),
        ("°C", "CEL"),
        ("A", "AMP"),
        ("V", "VLT"),
        ("%", "P1"),
        ("kW", "KWT"),
        ("km", "KMT"),
        ("km/h", "KMH"),
        ("s", "SEC"),
        ("ms", "C26"),
        ("Nm", "NU"),
        ("bar", "BAR"),
        ("mA", "4K"),
        ("KM/H", "KMH"),
        ("Hz", "HTZ"),
    ],
)
def test_unece_codes(unit: str, code: str) -> None:
    u = unece_unit(unit)
    assert u is not None and u.code == code


def test_unit_ids_and_unknowns() -> None:
    u = unece_unit("degC")
    assert u is not None and u.unit_id == 4408652  # the value in the OPC UA UNECE table (CEL)
    percent = unece_unit("%")
    assert percent is not None and percent.unit_id == 20529
    assert unece_unit("") is None and unece_unit(None) is None and unece_unit("furlongs") is None
    assert unece_unit("S") is None  # siemens is not seconds: short units are case-sensitive


@pytest.mark.parametrize(
    ("kw", "expected"),
    [
        ({"value_type": bool, "bit_length": 1}, ua.VariantType.Boolean),
        ({"value_type": float}, ua.VariantType.Double),
        ({"bit_length": 8}, ua.VariantType.Byte),
        ({"bit_length": 8, "signed": True}, ua.VariantType.SByte),
        ({"bit_length": 4}, ua.VariantType.Byte),
        ({"bit_length": 16, "signed": True}, ua.VariantType.Int16),
        ({"bit_length": 16}, ua.VariantType.UInt16),
        ({"bit_length": 17}, ua.VariantType.UInt32),
        ({"bit_length": 32, "signed": True}, ua.VariantType.Int32),
        ({"bit_length": 33}, ua.VariantType.UInt64),
        ({"bit_length": 64, "signed": True}, ua.VariantType.Int64),
        ({"bit_length": 8, "offset": -40.0, "minimum": -40, "maximum": 215}, ua.VariantType.Int16),
        ({"bit_length": 8, "scale": 10.0, "minimum": 0, "maximum": 2550}, ua.VariantType.UInt16),
    ],
)
def test_variant_types(kw: dict[str, Any], expected: ua.VariantType) -> None:
    assert variant_type(signal_info("b0.M.S", **kw)) == expected


# --- against a fake bridge ----------------------------------------------------------------------


@pytest.fixture
async def served(tmp_path: Path, pki_seed: Path) -> AsyncIterator[tuple[FakeBridge, OpcUaService, Client, int]]:
    bridge = FakeBridge(small_table(), state_dir=tmp_path)
    config = cfg(
        listen="opc.tcp://127.0.0.1:0",
        security_policies=["None"], users={},
        allow_anonymous=True,
        anonymous_role="operator",
        update_interval=0.01,
        pki_dir=str(tmp_path / "pki"),
    )
    svc = OpcUaService(bridge, config)
    await svc.start()
    try:
        async with Client(svc.endpoints()[0], timeout=10) as client:
            idx = int(await client.get_namespace_index("urn:canbridge"))
            yield bridge, svc, client, idx
    finally:
        await svc.stop()


async def read_until(node: Any, pred: Callable[[ua.DataValue], object]) -> ua.DataValue:
    """The node's DataValue once ``pred`` accepts it."""

    async def read() -> ua.DataValue:
        dv: ua.DataValue = await node.read_data_value(raise_on_bad_status=False)
        return dv

    return await eventually(read, pred, interval=0.01)


async def test_quality_status_codes(served: Any) -> None:
    bridge, _svc, client, idx = served
    node = client.get_node(nid("b0.Status.Speed", idx))
    expected = {
        Quality.GOOD: StatusCodes.Good,
        Quality.STALE: StatusCodes.UncertainLastUsableValue,
        Quality.BAD: StatusCodes.BadNoCommunication,
        Quality.WAITING: StatusCodes.BadWaitingForInitialData,
    }
    for i, (quality, code) in enumerate(expected.items()):
        ts = 1_700_000_000_123_456_000 + i
        bridge.set("b0.Status.Speed", 100 + i, quality, timestamp_ns=ts)
        dv = await read_until(node, lambda dv, code=code: dv_status(dv).value == code)  # type: ignore[misc]
        assert dv_status(dv).value == code, quality
        assert dv.SourceTimestamp is not None
        assert dv.SourceTimestamp.timestamp() == pytest.approx(ts / 1e9, abs=1e-6)
        if quality in (Quality.GOOD, Quality.STALE):
            assert dv_value(dv) == 100 + i
        else:
            assert dv_value(dv) is None  # Part 4 7.7.1: a Bad status carries no value


@pytest.mark.parametrize(
    ("reason", "code"),
    [
        (RefusalReason.BUS_DOWN, "BadNoCommunication"),
        (RefusalReason.WAITING, "BadWaitingForInitialData"),
        (RefusalReason.RATE_LIMITED, "BadTooManyOperations"),
        (RefusalReason.NOT_ALLOWED, "BadUserAccessDenied"),
        (RefusalReason.OUT_OF_RANGE, "BadOutOfRange"),
        (RefusalReason.WRONG_TYPE, "BadTypeMismatch"),
        (RefusalReason.NOT_WRITABLE, "BadNotWritable"),
    ],
)
async def test_refusal_status_codes(served: Any, reason: RefusalReason, code: str) -> None:
    bridge, _svc, client, idx = served
    bridge.refuse_next("b0.Command.Setpoint", reason)
    node = client.get_node(nid("b0.Command.Setpoint", idx))
    with pytest.raises(UaStatusCodeError) as err:
        await node.write_value(ua.DataValue(ua.Variant(10, ua.VariantType.UInt16)))
    assert status_name(err.value) == code
    assert bridge.writes[-1].refused is not None and bridge.writes[-1].refused.reason is reason
    assert bridge.writes[-1].caller.plugin == "opcua"


async def test_write_caller_and_other_attributes(served: Any) -> None:
    bridge, _svc, client, idx = served
    node = client.get_node(nid("b0.Command.Setpoint", idx))
    await node.write_value(ua.DataValue(ua.Variant(42, ua.VariantType.UInt16)))
    write = bridge.writes[-1]
    assert (write.name, write.value, write.accepted) == ("b0.Command.Setpoint", 42, True)
    caller = write.caller
    assert caller.user == "anonymous" and caller.address and caller.address.startswith("127.0.0.1:")
    with pytest.raises(UaStatusCodeError) as err:
        await node.write_attribute(AttributeIds.DisplayName, ua.DataValue(ua.Variant(ua.LocalizedText("x"))))
    assert status_name(err.value) in ("BadNotWritable", "BadUserAccessDenied")
    enable = client.get_node(nid("b0.Command.Enable", idx))
    await enable.write_value(ua.DataValue(ua.Variant(True, ua.VariantType.Boolean)))
    assert bridge.read("b0.Command.Enable").value is True


async def test_enum_kinds_and_value_as_text(served: Any) -> None:
    bridge, _svc, client, idx = served
    gear = client.get_node(nid("b0.Status.Gear", idx))  # sparse choices 1, 4
    assert await gear.read_type_definition() == nid(ObjectIds.MultiStateValueDiscreteType)
    values = await (await gear.get_child("0:EnumValues")).read_value()
    assert [(v.Value, v.DisplayName.Text) for v in values] == [(1, "Low"), (4, "High")]
    bridge.set("b0.Status.Gear", 4)
    text = await read_until(
        await gear.get_child("0:ValueAsText"), lambda dv: dv_value(dv) is not None and dv_value(dv).Text == "High"
    )
    assert dv_value(text).Text == "High"
    mode = client.get_node(nid("b0.Command.Mode", idx))
    assert await mode.read_type_definition() == nid(ObjectIds.MultiStateDiscreteType)
    odd = client.get_node(nid("b0.Status.Odd", idx))
    eu = await (await odd.get_child("0:EngineeringUnits")).read_value()
    assert eu.UnitId == -1 and eu.DisplayName.Text == "furlongs"  # no UNECE code: the DBC text stays


async def test_bus_down_shows_in_diagnostics(served: Any) -> None:
    from canbridge import BusState

    bridge, svc, client, idx = served
    bridge.set_bus_state("b0", BusState.BUS_OFF)
    await svc.update_diagnostics()
    assert await client.get_node(nid("b0._Diagnostics.State", idx)).read_value() == "bus_off"
    assert await client.get_node(nid("b0._Diagnostics.StateCode", idx)).read_value() == 3
    rec = await client.get_node(nid("b0._Diagnostics.RxErrorCounter", idx)).read_data_value(
        raise_on_bad_status=False
    )
    assert rec.StatusCode.value == StatusCodes.BadNotSupported  # the interface reports no counter
    age = await client.get_node(nid("b0._Diagnostics.Messages.Status.Age", idx)).read_data_value(
        raise_on_bad_status=False
    )
    assert age.StatusCode.value == StatusCodes.BadWaitingForInitialData


async def test_monitored_items_skip_the_deepcopy(served: Any) -> None:
    bridge, svc, client, idx = served
    got: list[Any] = []

    class Handler:
        def datachange_notification(self, node: Any, val: Any, data: Any) -> None:
            got.append(val)

    sub = await client.create_subscription(10, Handler())
    await sub.subscribe_data_change(client.get_node(nid("b0.Status.Speed", idx)), queuesize=0)
    subs = svc.server.iserver.subscription_service.subscriptions
    (isub,) = subs.values()
    (mdata,) = isub.monitored_item_srv._monitored_items.values()
    assert type(mdata.mvalue).__name__ == "_SharedValues"
    assert mdata.queue_size == 1
    for v in (1, 2, 3):
        bridge.set("b0.Status.Speed", v)
        await until(lambda v=v: v in got, what=f"{v} notified")  # type: ignore[misc]
    await sub.delete()


async def test_port_in_use_is_a_clear_error(served: Any, tmp_path: Path) -> None:
    _bridge, svc, _client, _idx = served
    port = svc.endpoints()[0].rsplit(":", 1)[1]
    other = OpcUaService(
        FakeBridge(small_table(), state_dir=tmp_path),
        cfg(
            listen=f"opc.tcp://127.0.0.1:{port}",
            security_policies=["None"], users={},
            allow_anonymous=True,
            pki_dir=str(tmp_path / "pki2"),
        ),
    )
    with pytest.raises(canbridge.ListenError, match=f"cannot listen on opc.tcp://127.0.0.1:{port}"):
        await other.start()
    await other.stop()  # stopping a service that failed to start is harmless


async def test_ipv6_loopback(tmp_path: Path) -> None:
    svc = OpcUaService(
        FakeBridge(small_table(), state_dir=tmp_path),
        cfg(
            listen="opc.tcp://[::1]:0", security_policies=["None"], users={}, allow_anonymous=True,
            pki_dir=str(tmp_path),
        ),
    )
    try:
        await svc.start()
    except OSError as e:  # a kernel without IPv6
        pytest.skip(f"no IPv6 loopback: {e}")
    try:
        (url,) = svc.endpoints()
        assert url.startswith("opc.tcp://[::1]:") and not url.endswith(":0")
        async with Client(url, timeout=10) as client:
            assert int(await client.get_namespace_index("urn:canbridge")) > 0
    finally:
        await svc.stop()


# --- every write judgement in the write path, and audited (issue #9, finding 1) ---------------------


def write_value(node: ua.NodeId, variant: ua.Variant, attribute: int = AttributeIds.Value,
                index_range: str | None = None) -> ua.WriteValue:
    wv = ua.WriteValue()
    wv.NodeId = node
    wv.AttributeId = attribute
    wv.Value = ua.DataValue(variant)
    wv.IndexRange = index_range
    return wv


async def write_request(client: Client, *items: ua.WriteValue) -> list[str]:
    params = ua.WriteParameters()
    params.NodesToWrite = list(items)
    return [c.name for c in await client.uaclient.write(params)]


DECODED = [
    (ua.Variant("fast", ua.VariantType.String), "fast"),
    (ua.Variant(b"\x01\x02", ua.VariantType.ByteString), b"\x01\x02"),
    (ua.Variant(None, ua.VariantType.Null), None),
    (ua.Variant([1, 2], ua.VariantType.UInt16), [1, 2]),
    (ua.Variant(True, ua.VariantType.Boolean), True),
    (ua.Variant(float("inf"), ua.VariantType.Double), float("inf")),
]


async def test_values_go_to_the_write_path_as_decoded(served: Any) -> None:
    bridge, _svc, client, idx = served  # one server for all variants: starting one takes seconds
    node = nid("b0.Command.Setpoint", idx)
    for variant, passed in DECODED:
        assert await write_request(client, write_value(node, variant)) == ["BadTypeMismatch"], passed
        record = bridge.writes[-1]
        assert record.value == passed and type(record.value) is type(passed)  # not pre-judged by the plugin
        assert record.refused is not None and record.refused.reason is RefusalReason.WRONG_TYPE


UNSUPPORTED = [
    (AttributeIds.DisplayName, None, "BadNotWritable"),
    (AttributeIds.Description, None, "BadNotWritable"),
    (AttributeIds.Value, "0", "BadIndexRangeInvalid"),
    (AttributeIds.Value, "1:2", "BadIndexRangeInvalid"),
]


async def test_unsupported_write_forms_are_audited(served: Any) -> None:
    bridge, _svc, client, idx = served
    node = nid("b0.Command.Setpoint", idx)
    for attribute, index_range, code in UNSUPPORTED:
        variant = ua.Variant(ua.LocalizedText("x")) if attribute != AttributeIds.Value else ua.Variant(
            10, ua.VariantType.UInt16)
        assert await write_request(client, write_value(node, variant, attribute, index_range)) == [code]
        record = bridge.writes[-1]
        assert record.refused is not None and record.refused.reason is RefusalReason.UNSUPPORTED
        assert record.name == "b0.Command.Setpoint" and record.caller.plugin == "opcua"
    assert not any(w.accepted for w in bridge.writes)


async def test_multi_node_write_is_all_or_nothing(served: Any) -> None:
    bridge, _svc, client, idx = served
    sp, mode, enable = (nid(f"b0.Command.{n}", idx) for n in ("Setpoint", "Mode", "Enable"))
    codes = await write_request(
        client,
        write_value(sp, ua.Variant(100, ua.VariantType.UInt16)),
        write_value(mode, ua.Variant(9, ua.VariantType.Byte)),  # out of range: refuses the request
        write_value(enable, ua.Variant(True, ua.VariantType.Boolean)),
    )
    assert codes == ["BadOperationAbandoned", "BadOutOfRange", "BadOperationAbandoned"]
    assert not any(w.accepted for w in bridge.writes)
    assert {w.name for w in bridge.writes if w.refused} == {f"b0.Command.{n}" for n in ("Setpoint", "Mode", "Enable")}
    # an unsupported form in one item refuses the others too, each audited
    bridge.writes.clear()
    codes = await write_request(
        client,
        write_value(sp, ua.Variant(100, ua.VariantType.UInt16)),
        write_value(mode, ua.Variant(1, ua.VariantType.Byte), index_range="0"),
    )
    assert codes == ["BadOperationAbandoned", "BadIndexRangeInvalid"]
    assert [w.refused.reason for w in bridge.writes if w.refused] == [RefusalReason.UNSUPPORTED] * 2
    # all valid: all sent, in one write_many
    codes = await write_request(
        client,
        write_value(sp, ua.Variant(100, ua.VariantType.UInt16)),
        write_value(mode, ua.Variant("Torque", ua.VariantType.String)),
    )
    assert codes == ["Good", "Good"]
    assert bridge.read("b0.Command.Setpoint").value == 100 and bridge.read("b0.Command.Mode").value == 2


async def call_send_frame(client: Client, idx: int, bus: ua.Variant, frame: ua.Variant) -> ua.CallMethodResult:
    req = ua.CallMethodRequest()
    req.ObjectId = nid("CANBridge", idx)
    req.MethodId = nid("CANBridge.SendFrame", idx)
    req.InputArguments = [bus, frame]
    (res,) = await client.uaclient.call([req])
    return res


SEND_FRAME_REFUSALS = [
    ("nope", "123#00", "BadInvalidArgument", 0, "unknown_bus: no bus named 'nope'"),
    ("b0", "12X#00", "BadInvalidArgument", 1, "invalid_frame: "),
    ("b0", 291, "BadInvalidArgument", 1, "invalid_frame: "),  # not a string: passed on as it is
]


async def test_send_frame_refusal_says_why(served: Any) -> None:
    bridge, _svc, client, idx = served
    for bus, frame, code, at_fault, text in SEND_FRAME_REFUSALS:
        variant = ua.Variant(frame, ua.VariantType.String if isinstance(frame, str) else ua.VariantType.Int32)
        res = await call_send_frame(client, idx, ua.Variant(bus, ua.VariantType.String), variant)
        assert res.StatusCode.name == code
        assert [r.is_good() for r in res.InputArgumentResults] == [i != at_fault for i in range(2)]
        sent, detail = (v.Value for v in res.OutputArguments)
        assert sent == "" and detail.startswith(text) and len(detail) > len("invalid_frame: ")
        assert res.InputArgumentDiagnosticInfos[at_fault].AdditionalInfo in detail
    assert not bridge.frames


async def test_audit_alarm_point_in_diagnostics(served: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import dataclasses

    bridge, svc, client, idx = served

    def var(name: str) -> Any:
        return client.get_node(nid(f"_Diagnostics.{name}", idx))

    assert await var("AuditAvailable").read_value() is True
    assert await var("AuditError").read_value() == ""
    assert await var("AuditFailures").read_value() == 0
    down = dataclasses.replace(bridge.stats(), audit_available=False, audit_error="No space left on device",
                               audit_failures=3)
    monkeypatch.setattr(bridge, "stats", lambda: down)
    await svc.update_diagnostics()
    assert await var("AuditAvailable").read_value() is False
    assert await var("AuditError").read_value() == "No space left on device"
    assert await var("AuditFailures").read_value() == 3
    browsed = {(await n.read_browse_name()).Name for n in await client.get_node(
        nid("_Diagnostics", idx)).get_children()}
    assert browsed == {"AuditAvailable", "AuditError", "AuditFailures"}


def test_asyncua_duplicate_errors_are_demoted(caplog: pytest.LogCaptureFixture) -> None:
    from canbridge_opcua import asyncua_compat

    proc_log = logging.getLogger("asyncua.server.uaprocessor")
    caplog.set_level(logging.INFO)
    proc_log.error("sending service fault response: %s (%s)", "doc", "BadUserAccessDenied")
    assert [r.levelno for r in caplog.records] == [logging.ERROR]  # without the filter: as asyncua logs it
    caplog.clear()
    asyncua_compat.install_log_filter()
    try:
        proc_log.error("sending service fault response: %s (%s)", "doc", "BadUserAccessDenied")
        logging.getLogger("asyncua.common.connection").error("Message size: %s is > configured max message size: %s",
                                                             9, 1)
        try:
            raise ValueError("bad body")
        except ValueError:
            proc_log.exception("Error while processing message")
        proc_log.error("something canbridge does not say itself")
        assert [(r.name, r.levelno) for r in caplog.records] == [("asyncua.server.uaprocessor", logging.ERROR)]
        caplog.clear()
        caplog.set_level(logging.DEBUG, logger="asyncua.server.uaprocessor")
        proc_log.error("sending service fault response: %s (%s)", "doc", "BadUserAccessDenied")
        assert [r.levelname for r in caplog.records] == ["DEBUG"]  # kept, one level down
    finally:
        asyncua_compat.remove_log_filter()
