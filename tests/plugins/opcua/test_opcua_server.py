"""The OPC UA server against a running bridge (demo mapping on a virtual bus), with asyncua's client."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from asyncua import ua
from asyncua.common.subscription import DataChangeNotif
from canbridge_opcua.units import UNECE_NAMESPACE

from canbridge import Quality
from canbridge.testing import eventually
from tests.plugins.opcua.conftest import OPERATOR, READER, connect, ns_index, running, status_name
from tests.plugins.opcua.uatypes import (
    AttributeIds,
    ObjectIds,
    StatusCodes,
    UaStatusCodeError,
    dv_status,
    dv_value,
    nid,
)

Cfg = Callable[..., dict[str, Any]]
SPEED = "demo.MotorStatus.MotorSpeed"
SETPOINT = "demo.MotorCommand.SpeedSetpoint"


def setpoint_of(data: bytes) -> int:
    return int.from_bytes(data[0:2], "little")


async def test_browse_tree_and_node_ids(opcua_config: Cfg, pki_seed: Any) -> None:
    async with running(opcua_config(), seed=pki_seed) as (h, _svc, url), connect(url) as c:
        idx = await ns_index(c)
        root = await c.nodes.objects.get_child([f"{idx}:CANBridge"])
        assert root.nodeid == nid("CANBridge", idx)
        buses = {(await n.read_browse_name()).Name for n in await root.get_children()}
        assert "demo" in buses
        bus = await root.get_child([f"{idx}:demo"])
        messages = {(await n.read_browse_name()).Name for n in await bus.get_children()}
        assert {
            "MotorStatus",
            "PowerStatus",
            "BatteryStatus",
            "MotorCommand",
            "VehicleInfo",
            "_Diagnostics",
        } <= messages
        speed = await bus.get_child([f"{idx}:MotorStatus", f"{idx}:MotorSpeed"])
        assert speed.nodeid == nid(SPEED, idx)
        # every signal of the table is a variable at its predictable NodeId
        for name in h.bridge.signals:
            node = c.get_node(nid(name, idx))
            assert await node.read_node_class() == ua.NodeClass.Variable, name
        desc = await speed.read_description()
        assert desc.Text == "Measured rotor speed."


async def test_types_units_ranges_and_enums(opcua_config: Cfg, pki_seed: Any) -> None:
    async with running(opcua_config(), seed=pki_seed) as (_h, _svc, url), connect(url) as c:
        idx = await ns_index(c)

        def node(name: str) -> Any:
            return c.get_node(nid(name, idx))

        speed = node(SPEED)
        assert await speed.read_type_definition() == nid(ObjectIds.AnalogItemType)
        assert await speed.read_data_type() == nid(ObjectIds.Int16)
        eu = await (await speed.get_child("0:EngineeringUnits")).read_value()
        assert eu.NamespaceUri == UNECE_NAMESPACE
        assert eu.UnitId == (ord("R") << 16) | (ord("P") << 8) | ord("M")
        rng = await (await speed.get_child("0:EURange")).read_value()
        assert (rng.Low, rng.High) == (-8000.0, 8000.0)

        temp = node("demo.MotorStatus.MotorTemperature")
        eu = await (await temp.get_child("0:EngineeringUnits")).read_value()
        assert eu.UnitId == (ord("C") << 16) | (ord("E") << 8) | ord("L")
        assert await temp.read_data_type() == nid(ObjectIds.Int16)  # 8 bits, offset -40
        soc = node("demo.BatteryStatus.StateOfCharge")
        eu = await (await soc.get_child("0:EngineeringUnits")).read_value()
        assert eu.UnitId == (ord("P") << 8) | ord("1")
        assert await soc.read_data_type() == nid(ObjectIds.Double)  # scale 0.5
        kmh = await (await node("demo.VehicleInfo.VehicleSpeed").get_child("0:EngineeringUnits")).read_value()
        assert kmh.DisplayName.Text == "km/h"
        assert await node("demo.Diagnostics.UptimeSeconds").read_data_type() == nid(ObjectIds.UInt32)

        state = node("demo.MotorStatus.MotorState")
        assert await state.read_type_definition() == nid(ObjectIds.MultiStateDiscreteType)
        texts = await (await state.get_child("0:EnumStrings")).read_value()
        assert [t.Text for t in texts] == ["Off", "Ready", "Running", "Fault"]
        assert await state.read_data_type() == nid(ObjectIds.Byte)
        assert await node("demo.MotorStatus.MotorEnabled").read_data_type() == nid(ObjectIds.Boolean)

        # access levels follow SignalInfo.writable
        assert ua.AccessLevel.CurrentWrite in await node(SETPOINT).get_access_level()
        assert ua.AccessLevel.CurrentWrite not in await node(SPEED).get_access_level()


async def test_values_timestamps_and_quality(opcua_config: Cfg, pki_seed: Any) -> None:
    async with running(opcua_config(), seed=pki_seed) as (h, _svc, url), connect(url) as c:
        idx = await ns_index(c)
        speed = c.get_node(nid(SPEED, idx))
        dv = await speed.read_data_value(raise_on_bad_status=False)
        assert dv_status(dv).value == StatusCodes.BadWaitingForInitialData

        h.inject("100#E803000000000000")  # MotorSpeed 1000 rpm
        await h.until(lambda: h.bridge.read(SPEED).value == 1000)
        sv = h.bridge.read(SPEED)
        dv = await eventually(lambda: speed.read_data_value(raise_on_bad_status=False), lambda dv: dv_value(dv) == 1000)
        assert dv_status(dv).is_good()
        assert sv.timestamp_ns is not None
        expected = datetime.fromtimestamp(sv.timestamp_ns / 1e9, UTC)
        assert dv.SourceTimestamp is not None
        assert abs((dv.SourceTimestamp - expected).total_seconds()) < 1e-3  # type: ignore[operator]

        # no more frames: the message goes stale after its timeout and the status follows
        await h.until(lambda: h.bridge.read(SPEED).quality is Quality.STALE, timeout=5)
        dv = await eventually(lambda: speed.read_data_value(raise_on_bad_status=False),
                              lambda dv: dv_status(dv).value == StatusCodes.UncertainLastUsableValue)
        assert dv_value(dv) == 1000  # the last usable value stays


async def test_subscription_delivers_changes(opcua_config: Cfg, pki_seed: Any) -> None:
    async with running(opcua_config(), seed=pki_seed) as (h, _svc, url), connect(url) as c:
        idx = await ns_index(c)
        got: list[tuple[Any, int]] = []

        class Handler:
            def datachange_notification(self, node: Any, val: Any, data: DataChangeNotif) -> None:
                got.append((val, data.monitored_item.Value.StatusCode.value))

        sub = await c.create_subscription(50, Handler())
        handle = await sub.subscribe_data_change(c.get_node(nid(SPEED, idx)), queuesize=0)
        assert handle
        for rpm in (100, 200, 300):
            h.inject(f"100#{rpm.to_bytes(2, 'little').hex().upper()}000000000000")
            await h.until(lambda rpm=rpm: h.bridge.read(SPEED).value == rpm)  # type: ignore[misc]
            await h.until(lambda rpm=rpm: any(v == rpm for v, _ in got), what=f"{rpm} notified")  # type: ignore[misc]
        await h.until(lambda: any(v == 300 for v, _ in got))
        assert [v for v, _ in got if v is not None][-3:] == [100, 200, 300]
        await h.until(lambda: got[-1][1] == StatusCodes.UncertainLastUsableValue, timeout=5)
        await sub.delete()


async def test_queue_size_zero_is_revised_to_one(opcua_config: Cfg, pki_seed: Any) -> None:
    async with running(opcua_config(), seed=pki_seed) as (_h, _svc, url), connect(url) as c:
        idx = await ns_index(c)
        sub = await c.create_subscription(50, None)
        params = ua.CreateMonitoredItemsParameters()
        params.SubscriptionId = sub.subscription_id
        params.TimestampsToReturn = ua.TimestampsToReturn.Both
        for i, q in enumerate((0, 5, 1_000_000)):
            req = ua.MonitoredItemCreateRequest()
            req.ItemToMonitor = ua.ReadValueId()
            req.ItemToMonitor.NodeId = nid(SPEED, idx)
            req.ItemToMonitor.AttributeId = AttributeIds.Value
            req.MonitoringMode = ua.MonitoringMode.Reporting
            req.RequestedParameters = ua.MonitoringParameters()
            req.RequestedParameters.ClientHandle = 900 + i
            req.RequestedParameters.QueueSize = q
            req.RequestedParameters.SamplingInterval = 50
            params.ItemsToCreate.append(req)
        results = await c.uaclient.create_monitored_items(params)
        assert [r.RevisedQueueSize for r in results] == [1, 5, 100]
        await sub.delete()


async def test_write_is_sent_on_the_bus(opcua_config: Cfg, pki_seed: Any) -> None:
    async with running(opcua_config(), seed=pki_seed) as (h, _svc, url), connect(url, OPERATOR) as c:
        idx = await ns_index(c)
        node = c.get_node(nid(SETPOINT, idx))
        assert await node.read_data_type() == nid(ObjectIds.UInt16)
        await node.write_value(ua.DataValue(ua.Variant(1500, ua.VariantType.UInt16)))
        # the cyclic frame repeats: the first with the new setpoint
        await eventually(lambda: h.next_sent(0x300, timeout=2), lambda f: setpoint_of(f.data) == 1500, timeout=3,
                         interval=0)
        assert await node.read_value() == 1500  # shown at once, not one update later
        # a choice text for an enum signal is accepted too
        mode = c.get_node(nid("demo.MotorCommand.Mode", idx))
        await mode.write_value(ua.DataValue(ua.Variant("Torque", ua.VariantType.String)))
        assert h.bridge.read("demo.MotorCommand.Mode").value == 2


REFUSALS = [
    ("demo.MotorStatus.MotorSpeed", ua.Variant(5, ua.VariantType.Int16), "BadNotWritable"),
    (SETPOINT, ua.Variant(6001, ua.VariantType.UInt16), "BadOutOfRange"),
    (SETPOINT, ua.Variant("fast", ua.VariantType.String), "BadTypeMismatch"),
    (SETPOINT, ua.Variant(12.5, ua.VariantType.Double), "BadTypeMismatch"),
    ("demo.MotorCommand.Enable", ua.Variant("on", ua.VariantType.String), "BadTypeMismatch"),
    (SETPOINT, ua.Variant(True, ua.VariantType.Boolean), "BadTypeMismatch"),
    (SETPOINT, ua.Variant(b"\x10\x00", ua.VariantType.ByteString), "BadTypeMismatch"),
    (SETPOINT, ua.Variant(None, ua.VariantType.Null), "BadTypeMismatch"),
    (SETPOINT, ua.Variant(float("nan"), ua.VariantType.Double), "BadTypeMismatch"),
    (SETPOINT, ua.Variant(nid(5, 0), ua.VariantType.NodeId), "BadTypeMismatch"),
    ("demo.MotorCommand.Mode", ua.Variant("Reverse", ua.VariantType.String), "BadTypeMismatch"),
    (SETPOINT, ua.Variant([1, 2], ua.VariantType.UInt16), "BadTypeMismatch"),
]


async def test_write_refusals(opcua_config: Cfg, pki_seed: Any) -> None:
    async with running(opcua_config(), seed=pki_seed) as (h, _svc, url), connect(url, OPERATOR) as c:
        idx = await ns_index(c)
        for signal, variant, expected in REFUSALS:
            node = c.get_node(nid(signal, idx))
            before = await node.read_data_value(raise_on_bad_status=False)
            with pytest.raises(UaStatusCodeError) as err:
                await node.write_value(ua.DataValue(variant))
            assert status_name(err.value) == expected, (signal, variant)
            after = await node.read_data_value(raise_on_bad_status=False)
            assert after.Value == before.Value  # asyncua did not store the refused value
            assert h.bridge.read(signal).value == dv_value(before)


async def test_write_rate_bound(opcua_config: Cfg, pki_seed: Any) -> None:
    async with running(opcua_config(), seed=pki_seed) as (_h, _svc, url), connect(url, OPERATOR) as c:
        idx = await ns_index(c)
        node = c.get_node(nid(SETPOINT, idx))
        codes = []
        for i in range(60):  # the demo allows 20 writes/s per signal, burst 20
            params = ua.WriteParameters()
            wv = ua.WriteValue()
            wv.NodeId = node.nodeid
            wv.AttributeId = AttributeIds.Value
            wv.Value = ua.DataValue(ua.Variant(100 + i, ua.VariantType.UInt16))
            params.NodesToWrite = [wv]
            codes.append((await c.uaclient.write(params))[0].name)
        assert codes[0] == "Good"
        assert "BadTooManyOperations" in codes


async def test_read_only_user_is_denied(opcua_config: Cfg, pki_seed: Any) -> None:
    async with running(opcua_config(), seed=pki_seed) as (h, _svc, url):
        for login in (READER, None):  # a read-role user, and anonymous (role read here)
            async with connect(url, login) as c:
                idx = await ns_index(c)
                node = c.get_node(nid(SETPOINT, idx))
                assert ua.AccessLevel.CurrentWrite not in await node.get_user_access_level()
                with pytest.raises(UaStatusCodeError) as err:
                    await node.write_value(ua.DataValue(ua.Variant(10, ua.VariantType.UInt16)))
                assert status_name(err.value) == "BadUserAccessDenied"
                with pytest.raises(UaStatusCodeError) as err:
                    await c.get_node(nid("CANBridge", idx)).call_method(f"{idx}:SendFrame", "demo", "123#00")
                assert status_name(err.value) == "BadUserAccessDenied"
        assert h.bridge.read(SETPOINT).value == 0


async def test_send_frame_for_operators(opcua_config: Cfg, pki_seed: Any) -> None:
    async with running(opcua_config(), seed=pki_seed) as (h, _svc, url), connect(url, OPERATOR) as c:
        idx = await ns_index(c)
        root = c.get_node(nid("CANBridge", idx))
        h.clear_sent()
        out = await root.call_method(f"{idx}:SendFrame", "demo", "123#DEADBEEF")
        assert out == ["123#DEADBEEF", ""]  # sent, and no refusal detail
        frame = await h.next_sent(0x123)
        assert frame.data == bytes.fromhex("DEADBEEF")
        for bus, text, expected in (("demo", "12X#00", "BadInvalidArgument"), ("nope", "123#00", "BadInvalidArgument")):
            with pytest.raises(UaStatusCodeError) as err:
                await root.call_method(f"{idx}:SendFrame", bus, text)
            assert status_name(err.value) == expected


async def test_bus_diagnostics(opcua_config: Cfg, pki_seed: Any) -> None:
    cfg = opcua_config(diagnostics_interval=0.1)
    async with running(cfg, simulate=True, seed=pki_seed) as (h, _svc, url), connect(url) as c:
        idx = await ns_index(c)

        def diag(name: str) -> Any:
            return c.get_node(nid(f"demo._Diagnostics.{name}", idx))

        assert await diag("State").read_value() == "active"
        assert await diag("StateCode").read_value() == 0
        # the simulator's frames arrive; counters follow within a second
        await eventually(diag("RxFrames").read_value, lambda n: n > 0, what="RxFrames counting")
        tx = await diag("TxFrames").read_value()
        assert 0 <= tx <= h.bridge.bus_status("demo").tx_frames
        assert isinstance(await diag("BusLoad").read_value(), float)
        age = await diag("Messages.MotorStatus.Age").read_data_value(raise_on_bad_status=False)
        assert dv_status(age).is_good() and 0 <= dv_value(age) < 5
        assert await diag("Messages.MotorStatus.Quality").read_value() == "good"
        assert await diag("Messages.MotorStatus.Frames").read_value() > 0


async def test_wrong_password_refused(opcua_config: Cfg, pki_seed: Any) -> None:
    async with running(opcua_config(), seed=pki_seed) as (_h, svc, url):
        with pytest.raises(UaStatusCodeError) as err:
            async with connect(url, (OPERATOR[0], "wrong")):
                pass
        assert status_name(err.value) in ("BadUserAccessDenied", "BadIdentityTokenRejected")
        with pytest.raises(UaStatusCodeError):
            async with connect(url, ("nobody", "x")):
                pass
        assert svc.users.failed_logins == 2


async def test_anonymous_refused_unless_configured(opcua_config: Cfg, pki_seed: Any) -> None:
    async with running(opcua_config(allow_anonymous=False), seed=pki_seed) as (_h, _svc, url):
        with pytest.raises(UaStatusCodeError) as err:
            async with connect(url):
                pass
        assert status_name(err.value) in ("BadIdentityTokenRejected", "BadUserAccessDenied")
        async with connect(url, READER) as c:
            assert await ns_index(c) > 0
