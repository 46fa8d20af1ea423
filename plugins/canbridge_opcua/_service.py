"""The running OPC UA server: asyncua with canbridge's value pump, write path and security.

How it hooks into asyncua 2.1 (server side, no patches to the library's classes):

* ``iserver.create_session`` is replaced so every client session is a :class:`_Session`. The session
  knows its user and peer address, so writes to signal variables go to ``bridge.write`` with a
  :class:`canbridge.Caller` and the client gets the StatusCode of the refusal; asyncua never stores a
  client's value itself (the variable changes only when the bridge's store does).
* Value updates bypass ``Node.write_value``: each batch from ``bridge.subscribe`` sets the Value
  attribute's DataValue directly and calls the monitored items' data-change callbacks. Monitored items
  on canbridge nodes get a value holder without asyncua's per-notification ``copy.deepcopy`` (our
  DataValues are fresh objects never mutated after publication, so the copy guards nothing).
* A requested monitored-item queue size of 0 is revised to 1 (asyncua would make it 10,000), and
  sizes are capped at ``max_monitored_item_queue``; publishing intervals are revised up to
  ``min_publishing_interval_ms``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import socket
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from asyncua import ua
from asyncua.server.internal_session import InternalSession
from asyncua.server.monitored_item_service import MonitoredItemService, MonitoredItemValues
from asyncua.server.server import Server
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.status_codes import StatusCodes

from canbridge import (
    Bridge,
    Caller,
    CanbridgeError,
    FrameFormatError,
    Permission,
    Quality,
    RefusalReason,
    SignalValue,
    UnknownSignal,
    WriteRefused,
)
from canbridge_opcua._config import OpcUaConfig
from canbridge_opcua._nodes import QUALITY_STATUS, SignalNode, build_plan, nodeid, status
from canbridge_opcua._security import (
    Pki,
    Ruleset,
    TrustListValidator,
    UserManager,
    ensure_certificate,
    role_of,
)

log = logging.getLogger("canbridge.opcua")

REFUSAL_STATUS: dict[RefusalReason, int] = {
    RefusalReason.UNKNOWN_SIGNAL: StatusCodes.BadNodeIdUnknown,
    RefusalReason.NOT_WRITABLE: StatusCodes.BadNotWritable,
    RefusalReason.NOT_ALLOWED: StatusCodes.BadUserAccessDenied,
    RefusalReason.WRONG_TYPE: StatusCodes.BadTypeMismatch,
    RefusalReason.OUT_OF_RANGE: StatusCodes.BadOutOfRange,
    RefusalReason.RATE_LIMITED: StatusCodes.BadTooManyOperations,
    RefusalReason.BUS_DOWN: StatusCodes.BadNoCommunication,
    RefusalReason.WAITING: StatusCodes.BadWaitingForInitialData,
    RefusalReason.UNKNOWN_BUS: StatusCodes.BadInvalidArgument,
    RefusalReason.INVALID_FRAME: StatusCodes.BadInvalidArgument,
    RefusalReason.UNAUTHENTICATED: StatusCodes.BadUserAccessDenied,
    RefusalReason.UNSUPPORTED: StatusCodes.BadWriteNotSupported,
    RefusalReason.AUDIT_UNAVAILABLE: StatusCodes.BadResourceUnavailable,
}

_POLICIES: dict[tuple[str, str], ua.SecurityPolicyType] = {
    ("Basic256Sha256", "Sign"): ua.SecurityPolicyType.Basic256Sha256_Sign,
    ("Basic256Sha256", "SignAndEncrypt"): ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
    ("Aes128_Sha256_RsaOaep", "Sign"): ua.SecurityPolicyType.Aes128Sha256RsaOaep_Sign,
    ("Aes128_Sha256_RsaOaep", "SignAndEncrypt"): ua.SecurityPolicyType.Aes128Sha256RsaOaep_SignAndEncrypt,
    ("Aes256_Sha256_RsaPss", "Sign"): ua.SecurityPolicyType.Aes256Sha256RsaPss_Sign,
    ("Aes256_Sha256_RsaPss", "SignAndEncrypt"): ua.SecurityPolicyType.Aes256Sha256RsaPss_SignAndEncrypt,
}

_GOOD = status(StatusCodes.Good)
_NUMERIC_VARIANTS = frozenset(
    {
        ua.VariantType.SByte,
        ua.VariantType.Byte,
        ua.VariantType.Int16,
        ua.VariantType.UInt16,
        ua.VariantType.Int32,
        ua.VariantType.UInt32,
        ua.VariantType.Int64,
        ua.VariantType.UInt64,
        ua.VariantType.Float,
        ua.VariantType.Double,
    }
)
_current_session: contextvars.ContextVar[_Session | None] = contextvars.ContextVar(
    "canbridge_opcua_session", default=None
)


class _SharedValues(MonitoredItemValues):  # type: ignore[misc]
    """A monitored item's last two values, kept by reference: see the module docstring."""

    def set_current_datavalue(self, cur_val: ua.DataValue) -> None:
        self.old_dvalue = self.current_dvalue
        self.current_dvalue = cur_val


# --- the hot path ---------------------------------------------------------------------------------
# asyncua's Variant and DataValue run a type-guessing __post_init__ on every construction (about 40 %
# of an update's cost). Values here are built from known types, so fields are set directly; checked
# once at import against the ordinary constructors, falling back to them if asyncua's layout changes.

_new = object.__new__
_ZERO: Any = 0


def _variant_fast(value: Any, vt: ua.VariantType) -> ua.Variant:
    v = _new(ua.Variant)
    v.Value = value
    v.VariantType = vt
    v.Dimensions = None
    v.is_array = False
    return v


def _datavalue_fast(variant: ua.Variant, status: ua.StatusCode, source: Any, server: Any) -> ua.DataValue:
    # timestamps are datetimes; asyncua annotates them with its DateTime class, hence Any
    d = _new(ua.DataValue)
    d.Encoding = _ZERO
    d.Value = variant
    d.StatusCode = status
    d.SourceTimestamp = source
    d.ServerTimestamp = server
    d.SourcePicoseconds = None
    d.ServerPicoseconds = None
    return d


def _variant_slow(value: Any, vt: ua.VariantType) -> ua.Variant:
    return ua.Variant(value, vt)


def _datavalue_slow(variant: ua.Variant, status: ua.StatusCode, source: Any, server: Any) -> ua.DataValue:
    return ua.DataValue(variant, status, SourceTimestamp=source, ServerTimestamp=server)


def _fast_constructors_match() -> bool:
    try:
        now = datetime.now(UTC)
        good = status(StatusCodes.Good)
        fast = _datavalue_fast(_variant_fast(1.5, ua.VariantType.Double), good, now, now)
        slow = _datavalue_slow(_variant_slow(1.5, ua.VariantType.Double), good, now, now)
        return fast == slow and repr(fast) == repr(slow) and fast.Encoding == slow.Encoding
    except Exception:
        return False


if _fast_constructors_match():
    make_variant, make_datavalue = _variant_fast, _datavalue_fast
else:  # pragma: no cover - a future asyncua with another layout
    make_variant, make_datavalue = _variant_slow, _datavalue_slow

_MI_CALLBACK = MonitoredItemService.datachange_callback
_DISABLED = ua.MonitoringMode.Disabled


async def notify(attval: Any, dv: ua.DataValue) -> None:
    """Store a new value and notify its monitored items.

    For monitored items on canbridge nodes (value holders of :class:`_SharedValues`, no filter) this
    does what asyncua's ``MonitoredItemService.datachange_callback`` does, minus building a default
    notification it overwrites at once; anything else goes through asyncua's callback.
    """
    attval.value = dv
    for handle, cb in list(attval.datachange_callbacks.items()):
        mis = getattr(cb, "__self__", None)
        if type(mis) is MonitoredItemService and getattr(cb, "__func__", None) is _MI_CALLBACK:
            mid = mis._monitored_datachange.get(handle)
            mdata = mis._monitored_items.get(mid) if mid is not None else None
            if mid is not None and mdata is not None and not mdata.filter and type(mdata.mvalue) is _SharedValues:
                if mdata.mode == _DISABLED:
                    continue
                mv = mdata.mvalue
                old = mv.current_dvalue
                mv.old_dvalue = old
                mv.current_dvalue = dv
                if old is None or old.StatusCode != dv.StatusCode or old.Value != dv.Value:
                    n = _new(ua.MonitoredItemNotification)
                    n.ClientHandle = mdata.client_handle
                    n.Value = dv
                    await mis.isub.enqueue_datachange_event(mid, n, mdata.queue_size)
                continue
        try:
            await cb(handle, dv)
        except Exception:
            log.exception("opcua: data change callback failed")


class _Session(InternalSession):  # type: ignore[misc]
    """A client session that routes writes, method calls and subscriptions through the service."""

    service: OpcUaService  # set on the subclass made per service
    secured: bool = True

    @property
    def address(self) -> str | None:
        name = self.name
        if isinstance(name, tuple) and len(name) >= 2:
            host = str(name[0])
            return f"[{host}]:{name[1]}" if ":" in host else f"{host}:{name[1]}"
        return None if name is None else str(name)

    def caller(self, permissions: frozenset[Permission]) -> Caller:
        role = role_of(self.user)
        return Caller(
            plugin="opcua",
            user=getattr(self.user, "name", None) or ("anonymous" if role else None),
            address=self.address,
            permissions=permissions if role == "operator" else frozenset(),
        )

    async def create_session(
        self, params: ua.CreateSessionParameters, sockname: tuple[str, int] | None = None
    ) -> ua.CreateSessionResult:
        if not self.secured:
            # Part 4, 5.6.2: with SecurityPolicy None the client's certificate is ignored.
            params.ClientCertificate = None
        return await super().create_session(params, sockname)

    async def write(self, params: ua.WriteParameters) -> list[ua.StatusCode]:
        svc = self.service
        nodes = params.NodesToWrite
        ours = [svc.signal_for(wv.NodeId) for wv in nodes]
        if not any(ours):
            return await super().write(params)  # type: ignore[no-any-return]
        results: list[ua.StatusCode | None] = [None] * len(nodes)
        others = [wv for wv, sig in zip(nodes, ours, strict=True) if sig is None]
        if others:
            sub = ua.WriteParameters()
            sub.NodesToWrite = others
            it = iter(await super().write(sub))
            for i, sig in enumerate(ours):
                if sig is None:
                    results[i] = next(it)
        for i, (wv, sig) in enumerate(zip(nodes, ours, strict=True)):
            if sig is not None:
                results[i] = await svc.client_write(self, sig, wv)
        return [r if r is not None else status(StatusCodes.BadInternalError) for r in results]

    async def read(self, params: ua.ReadParameters) -> list[ua.DataValue]:
        results: list[ua.DataValue] = await super().read(params)
        if role_of(self.user) != "operator":
            # A read-only login sees no CurrentWrite bit in UserAccessLevel (the attribute is per user).
            svc = self.service
            for i, rv in enumerate(params.NodesToRead):
                if rv.AttributeId == AttributeIds.UserAccessLevel and svc.signal_for(rv.NodeId):
                    results[i] = ua.DataValue(ua.Variant(ua.AccessLevel.CurrentRead.mask, ua.VariantType.Byte))
        return results

    async def call(self, params: list[ua.CallMethodRequest]) -> list[ua.CallMethodResult]:
        token = _current_session.set(self)
        try:
            return await super().call(params)  # type: ignore[no-any-return]
        finally:
            _current_session.reset(token)

    async def create_subscription(
        self, params: ua.CreateSubscriptionParameters, callback: Any, request_callback: Any = None
    ) -> ua.CreateSubscriptionResult:
        floor = self.service.cfg.min_publishing_interval_ms
        if params.RequestedPublishingInterval < floor:
            params.RequestedPublishingInterval = floor
        return await super().create_subscription(params, callback, request_callback=request_callback)

    async def create_monitored_items(
        self, params: ua.CreateMonitoredItemsParameters
    ) -> list[ua.MonitoredItemCreateResult]:
        for item in params.ItemsToCreate:
            if item.RequestedParameters.QueueSize == 0:
                item.RequestedParameters.QueueSize = 1  # asyncua would revise 0 to 10,000
        results: list[ua.MonitoredItemCreateResult] = await super().create_monitored_items(params)
        sub = self.subscription_service.subscriptions.get(params.SubscriptionId)
        items = getattr(getattr(sub, "monitored_item_srv", None), "_monitored_items", None)
        if isinstance(items, dict):
            for item, res in zip(params.ItemsToCreate, results, strict=True):
                mdata = items.get(res.MonitoredItemId) if res.StatusCode.is_good() else None
                if mdata is not None and self.service.is_fast_node(item.ItemToMonitor.NodeId):
                    shared = _SharedValues()
                    shared.current_dvalue = mdata.mvalue.current_dvalue
                    shared.old_dvalue = mdata.mvalue.old_dvalue
                    mdata.mvalue = shared
        return results

    async def modify_monitored_items(
        self, params: ua.ModifyMonitoredItemsParameters
    ) -> list[ua.MonitoredItemModifyResult]:
        cap = self.service.cfg.max_monitored_item_queue
        for item in params.ItemsToModify:
            q = item.RequestedParameters.QueueSize
            item.RequestedParameters.QueueSize = 1 if q == 0 else min(q, cap)
        return await super().modify_monitored_items(params)  # type: ignore[no-any-return]


class OpcUaService:
    """The ``opcua`` northbound service."""

    def __init__(self, bridge: Bridge, cfg: OpcUaConfig) -> None:
        self.bridge = bridge
        self.cfg = cfg
        self.server: Server | None = None
        self.ns_index = 0
        self._signals: dict[str, SignalNode] = {}
        self._by_nodeid: dict[ua.NodeId, SignalNode] = {}
        self._fast: set[ua.NodeId] = set()
        self._diag: dict[tuple[str, str], tuple[Any, ua.VariantType]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._endpoints: list[str] = []
        self._bound: tuple[str, int] | None = None
        self.validator: TrustListValidator | None = None
        self.users = UserManager(cfg)
        self.pki: Pki | None = None
        self.updates = 0  # signal values applied, for the benchmark and diagnostics

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        cfg = self.cfg
        server = Server(user_manager=self.users)  # type: ignore[arg-type]
        self.server = server
        await server.init()
        server.set_server_name(cfg.server_name)
        await server.set_application_uri(cfg.application_uri)
        server.product_uri = "urn:canbridge"
        server.manufacturer_name = "canbridge"
        server.set_endpoint(cfg.listen)
        iserver = server.iserver
        iserver.max_monitored_item_queue_size = cfg.max_monitored_item_queue

        policies: list[ua.SecurityPolicyType] = []
        if "None" in cfg.security_policies:
            policies.append(ua.SecurityPolicyType.NoSecurity)
        secure = [p for p in cfg.security_policies if p != "None"]
        for p in secure:
            for m in cfg.security_modes:
                policies.append(_POLICIES[(p, m)])
        server.set_security_policy(policies, permission_ruleset=Ruleset())
        tokens: list[type] = [ua.UserNameIdentityToken] if cfg.users else []
        if cfg.allow_anonymous:
            tokens.insert(0, ua.AnonymousIdentityToken)
        server.set_identity_tokens(tokens)

        # relative paths in the configuration are relative to its file, like the rest of canbridge's
        base = self.bridge.config_path.parent if self.bridge.config_path is not None else Path.cwd()
        self.pki = Pki(base / cfg.pki_dir if cfg.pki_dir is not None else self.bridge.state_dir / "opcua" / "pki")
        await asyncio.to_thread(self.pki.make_dirs)
        if secure or cfg.certificate is not None:
            cert, key = await ensure_certificate(cfg, self.pki, base)
            await server.load_certificate(str(cert))
            await server.load_private_key(str(key))
        self.validator = TrustListValidator(self.pki, cfg.trust_all_clients)
        server.set_certificate_validator(self.validator)  # type: ignore[arg-type]

        self.ns_index = await server.register_namespace(cfg.namespace_uri)
        await self._build_address_space()
        self._install_session_factory()

        try:
            await server.start()
        except OSError as e:
            with contextlib.suppress(Exception):
                await server.stop()
            raise OSError(e.errno, f"opcua: cannot listen on {cfg.listen}: {e.strerror or e}") from e
        self._fix_endpoint_urls()
        self._tasks.append(asyncio.create_task(self._pump(), name="opcua-values"))
        self._tasks.append(asyncio.create_task(self._diagnostics_loop(), name="opcua-diagnostics"))
        log.info("opcua: serving %d signals on %s", len(self._signals), ", ".join(self._endpoints))

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(t, 2.0)
        self._tasks.clear()
        if self.server is not None:
            # asyncua's clock task sleeps 1 s between ticks and stop() waits for it: end it now
            clock = getattr(self.server.iserver, "time_task", None)
            if isinstance(clock, asyncio.Task):
                clock.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await clock
                self.server.iserver.time_task = None
            try:
                await asyncio.wait_for(self.server.stop(), 5.0)
            except (TimeoutError, Exception) as e:  # a stuck client must not hang the bridge's shutdown
                log.warning("opcua: server stop did not finish cleanly: %s", e)
            self.server = None

    def endpoints(self) -> list[str]:
        return list(self._endpoints)

    # --- set-up ------------------------------------------------------------------------------

    def _install_session_factory(self) -> None:
        assert self.server is not None
        server = self.server
        iserver = server.iserver
        svc = self
        session_cls = type("CanbridgeSession", (_Session,), {"service": svc})

        def create_session(name: Any, user: Any = None, external: bool = False) -> InternalSession:
            kwargs: dict[str, Any] = {"external": external}
            if user is not None:
                kwargs["user"] = user
            session: _Session = session_cls(iserver, iserver.aspace, iserver.subscription_service, name, **kwargs)
            session.secured = svc._peer_secured(name)
            return session

        iserver.create_session = create_session  # type: ignore[method-assign]

    def _peer_secured(self, peer: Any) -> bool:
        """Whether the secure channel of the connection from ``peer`` signs its messages."""
        bserver = self.server.bserver if self.server is not None else None
        for proto in getattr(bserver, "clients", []):
            proc = getattr(proto, "processor", None)
            if proc is not None and getattr(proc, "name", None) == peer:
                policy = getattr(getattr(proc, "_connection", None), "security_policy", None)
                return getattr(policy, "Mode", ua.MessageSecurityMode.None_) != ua.MessageSecurityMode.None_
        return True  # unknown: validate the certificate (the safe side)

    def _fix_endpoint_urls(self) -> None:
        """With port 0 the endpoints were described before the port was known: rewrite them."""
        assert self.server is not None and self.server.bserver is not None
        host, port = self.server.bserver.hostname, self.server.bserver.port
        cfg_host = self.cfg.host
        if cfg_host in ("0.0.0.0", "::"):
            # listening everywhere: describe endpoints with the address each client used to connect
            self.server.set_match_discovery_endpoint_url(True)
            cfg_host = self.cfg.hostname or socket.gethostname()
        shown = f"[{cfg_host}]" if ":" in cfg_host else cfg_host
        url = f"opc.tcp://{shown}:{port}"
        self._bound = (host, port)
        self._endpoints = [url]
        for edp in self.server.iserver.endpoints:
            edp.EndpointUrl = url
            edp.Server.DiscoveryUrls = [url]

    async def _build_address_space(self) -> None:
        assert self.server is not None
        b = self.bridge
        plan = build_plan(
            self.ns_index, dict(b.buses), dict(b.messages), dict(b.signals), self.cfg.update_interval * 1000
        )
        session = self.server.iserver.isession
        results = await session.add_nodes(plan.items)
        for item, res in zip(plan.items, results, strict=True):
            if not res.StatusCode.is_good():
                raise CanbridgeError(f"opcua: cannot add node {item.RequestedNewNodeId}: {res.StatusCode.name}")
        aspace = self.server.iserver.aspace
        for node in plan.signals.values():
            node.attval = aspace[node.nodeid].attributes[AttributeIds.Value]
            if node.choice_text_nodeid is not None:
                node.text_attval = aspace[node.choice_text_nodeid].attributes[AttributeIds.Value]
                self._fast.add(node.choice_text_nodeid)
            self._by_nodeid[node.nodeid] = node
            self._fast.add(node.nodeid)
        self._signals = plan.signals
        for key, (diag_id, vt) in plan.diag.items():
            self._diag[key] = (aspace[diag_id].attributes[AttributeIds.Value], vt)
            self._fast.add(diag_id)
        assert plan.root is not None
        root = self.server.get_node(plan.root)
        await root.add_method(
            nodeid("CANBridge.SendFrame", self.ns_index),
            ua.QualifiedName("SendFrame", self.ns_index),
            self._send_frame_method,
            [
                _argument("bus", ObjectIds.String, "name of a configured bus"),
                _argument("frame", ObjectIds.String, "cansend string, e.g. 123#DEADBEEF"),
            ],
            [_argument("sent", ObjectIds.String, "the frame as sent (cansend string)")],
        )
        # initial state: quality and value of everything before the first batch arrives
        await self.apply(b.read_many())
        await self.update_diagnostics()

    # --- lookups -----------------------------------------------------------------------------

    def signal_for(self, nodeid: ua.NodeId) -> SignalNode | None:
        return self._by_nodeid.get(nodeid)

    def is_fast_node(self, nodeid: ua.NodeId) -> bool:
        return nodeid in self._fast

    def node_id(self, signal: str) -> ua.NodeId:
        """The NodeId of a signal's variable."""
        return self._signals[signal].nodeid

    # --- values ------------------------------------------------------------------------------

    async def _pump(self) -> None:
        while True:
            try:
                async with self.bridge.subscribe(interval=self.cfg.update_interval) as sub:
                    async for batch in sub:
                        await self.apply(batch)
                return  # the bridge closed the subscription: it is shutting down
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("opcua: value updates failed; resubscribing in 1 s")
                await asyncio.sleep(1.0)

    async def apply(self, batch: Iterable[SignalValue]) -> None:
        """Put a batch of signal values into the address space and notify monitored items.

        The batched path: one DataValue per changed signal, set in place, no type check, no
        ``write_value`` round trip through a session.
        """
        now = datetime.now(UTC)
        signals = self._signals
        variant, datavalue, fromts = make_variant, make_datavalue, datetime.fromtimestamp
        good = QUALITY_STATUS[Quality.GOOD]
        null = ua.Variant(None, ua.VariantType.Null)
        n = 0
        for sv in batch:
            node = signals.get(sv.name)
            if node is None:
                continue
            status = good if sv.quality is Quality.GOOD else QUALITY_STATUS[sv.quality]
            value = sv.value
            # Part 4 7.7.1: no value with a Bad status
            bad = value is None or status.is_bad()
            var = null if bad else variant(_convert(value, node.vtype), node.vtype)
            ts = sv.timestamp_ns
            dv = datavalue(var, status, None if ts is None else fromts(ts / 1e9, UTC), now)
            await notify(node.attval, dv)
            if node.text_attval is not None:
                await self._set_choice_text(node, value, status, dv)
            n += 1
            if not n % 2000:
                await asyncio.sleep(0)  # a batch of many thousand changes must not hold up client requests
        self.updates += n

    async def _set_choice_text(self, node: SignalNode, value: Any, status: ua.StatusCode, dv: ua.DataValue) -> None:
        choices = node.info.choices or {}
        text = "" if value is None else choices.get(int(value), str(value))
        tdv = ua.DataValue(
            ua.Variant(ua.LocalizedText(text), ua.VariantType.LocalizedText),
            status,
            SourceTimestamp=dv.SourceTimestamp,
            ServerTimestamp=dv.ServerTimestamp,
        )
        await notify(node.text_attval, tdv)

    async def _diagnostics_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.diagnostics_interval)
            try:
                await self.update_diagnostics()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("opcua: diagnostics update failed")

    async def update_diagnostics(self) -> None:
        now = datetime.now(UTC)
        for bus in self.bridge.buses:
            try:
                st = self.bridge.bus_status(bus)
            except KeyError:
                continue
            values: dict[str, Any] = {
                "State": st.state.value,
                "StateCode": st.state.code,
                "RxFrames": st.rx_frames,
                "TxFrames": st.tx_frames,
                "ErrorFrames": st.error_frames,
                "DecodeErrors": st.decode_errors,
                "DroppedFrames": st.dropped_frames,
                "RxErrorCounter": st.rx_error_counter,
                "TxErrorCounter": st.tx_error_counter,
                "BusOffCount": st.bus_off_count,
                "Restarts": st.restarts,
                "Reconnects": st.reconnects,
                "BusLoad": float(st.bus_load),
                "LastError": st.last_error or "",
            }
            for name, value in values.items():
                await self._set_diag((bus, name), value, now)
        for ms in self.bridge.message_status():
            await self._set_diag((ms.name, "Age"), ms.age_s, now, waiting=ms.age_s is None)
            await self._set_diag((ms.name, "Frames"), ms.frames, now)
            await self._set_diag((ms.name, "Quality"), ms.quality.value, now)

    async def _set_diag(self, key: tuple[str, str], value: Any, now: datetime, waiting: bool = False) -> None:
        entry = self._diag.get(key)
        if entry is None:
            return
        attval, vt = entry
        if value is None:
            code = StatusCodes.BadWaitingForInitialData if waiting else StatusCodes.BadNotSupported
            dv = make_datavalue(ua.Variant(None, ua.VariantType.Null), status(code), None, now)
        else:
            dv = make_datavalue(ua.Variant(_convert(value, vt), vt), _GOOD, now, now)
        old = attval.value
        if old is not None and old.Value == dv.Value and old.StatusCode == dv.StatusCode:
            return  # unchanged counters need no notification
        await notify(attval, dv)

    # --- writes ------------------------------------------------------------------------------

    async def client_write(self, session: _Session, node: SignalNode, wv: ua.WriteValue) -> ua.StatusCode:
        """A client's write to a signal variable: through ``bridge.write``, refused or sent."""
        if wv.AttributeId != AttributeIds.Value:
            return status(StatusCodes.BadNotWritable)
        if wv.IndexRange:
            return status(StatusCodes.BadIndexRangeInvalid)
        dv = wv.Value
        variant = dv.Value if dv is not None else None
        if variant is None or variant.Value is None or variant.is_array or isinstance(variant.Value, list):
            return status(StatusCodes.BadTypeMismatch)
        info = node.info
        vt = variant.VariantType
        value: Any = variant.Value
        if vt == ua.VariantType.Boolean:
            if info.value_type is not bool:
                return status(StatusCodes.BadTypeMismatch)
        elif vt in _NUMERIC_VARIANTS:
            if info.value_type is bool:
                return status(StatusCodes.BadTypeMismatch)
        elif vt in (ua.VariantType.String, ua.VariantType.LocalizedText) and info.choices:
            value = value.Text if isinstance(value, ua.LocalizedText) else value  # a choice text
        else:
            return status(StatusCodes.BadTypeMismatch)
        caller = session.caller(frozenset({Permission.WRITE}))
        try:
            await self.bridge.write(info.name, value, caller)
        except WriteRefused as e:
            log.info("opcua: write of %s=%r by %s refused: %s", info.name, value, caller, e.detail)
            return status(REFUSAL_STATUS.get(e.reason, StatusCodes.BadUnexpectedError))
        except UnknownSignal:
            return status(StatusCodes.BadNodeIdUnknown)
        except CanbridgeError as e:
            log.warning("opcua: write of %s by %s failed: %s", info.name, caller, e)
            return status(StatusCodes.BadCommunicationError)
        # show the accepted value now rather than one update interval later
        with contextlib.suppress(CanbridgeError):
            await self.apply([self.bridge.read(info.name)])
        return status(StatusCodes.Good)

    async def _send_frame_method(self, parent: ua.NodeId, bus: ua.Variant, frame: ua.Variant) -> Any:
        session = _current_session.get()
        if session is None:
            return status(StatusCodes.BadUserAccessDenied)
        if not isinstance(bus.Value, str) or not isinstance(frame.Value, str):
            return status(StatusCodes.BadInvalidArgument)
        caller = session.caller(frozenset({Permission.RAW}))
        try:
            sent = await self.bridge.send_frame(bus.Value, frame.Value, caller)
        except WriteRefused as e:
            log.info("opcua: SendFrame %s %s by %s refused: %s", bus.Value, frame.Value, caller, e.detail)
            return status(REFUSAL_STATUS.get(e.reason, StatusCodes.BadUnexpectedError))
        except FrameFormatError:
            return status(StatusCodes.BadInvalidArgument)
        except KeyError:
            return status(StatusCodes.BadInvalidArgument)
        except CanbridgeError as e:
            log.warning("opcua: SendFrame by %s failed: %s", caller, e)
            return status(StatusCodes.BadCommunicationError)
        return [ua.Variant(sent.to_cansend(), ua.VariantType.String)]

    @property
    def pki_root(self) -> Path | None:
        return self.pki.root if self.pki else None

    @property
    def bound_port(self) -> int | None:
        return self._bound[1] if self._bound else None


def _convert(value: Any, vt: ua.VariantType) -> Any:
    if vt == ua.VariantType.Double:
        return float(value)
    if vt == ua.VariantType.Boolean:
        return bool(value)
    if vt == ua.VariantType.String:
        return str(value)
    return int(value)


def _argument(name: str, datatype: int, description: str) -> ua.Argument:
    arg = ua.Argument()
    arg.Name = name
    arg.DataType = nodeid(datatype)
    arg.ValueRank = ua.ValueRank.Scalar
    arg.Description = ua.LocalizedText(description)
    return arg
