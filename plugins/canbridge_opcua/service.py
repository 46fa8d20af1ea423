"""The running OPC UA server: asyncua with canbridge's value pump, write path and security.

How it hooks into asyncua 2.1 (server side, no patches to the library's classes; every use of an
asyncua internal is in :mod:`canbridge_opcua.asyncua_compat`, checked at start):

* The transport is asyncua's with canbridge's limits in front (``asyncua_compat.GuardedProtocol``,
  policy in :class:`_Transport`): chunk headers checked before their body is read, admission per
  address and in total (half-open connections are evicted first), a handshake deadline, passwords
  verified off the event loop before asyncua's synchronous ActivateSession, RegisterServer refused.

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
import weakref
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from asyncua import ua
from asyncua.common.connection import TransportLimits
from asyncua.common.utils import ServiceError
from asyncua.server.internal_session import InternalSession
from asyncua.server.server import Server
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.status_codes import StatusCodes

from canbridge import (
    Bridge,
    Caller,
    CanbridgeError,
    FrameFormatError,
    ListenError,
    Permission,
    Quality,
    RefusalReason,
    SignalInfo,
    SignalsAddedSubscription,
    SignalValue,
    UnknownSignal,
    WriteRefused,
    io_turn,
)
from canbridge_opcua.added import added_items
from canbridge_opcua.asyncua_compat import (
    MONITORED_ITEM_CALLBACK,
    MONITORED_ITEM_SERVICE,
    GuardedProcessor,
    GuardedProtocol,
    LoginResult,
    MonitoredItemValues,
    current_processor,
    guarded_binary_server,
    install_log_filter,
    monitored_item_count,
    monitored_item_data,
    monitored_item_lookup,
    peer_host,
    remove_log_filter,
    require,
)
from canbridge_opcua.bulk import BulkAdder
from canbridge_opcua.config import OpcUaConfig
from canbridge_opcua.diagnostics import Dm1Nodes
from canbridge_opcua.nodes import QUALITY_STATUS, Plan, SignalNode, bridge_diag_key, generate, nodeid, status
from canbridge_opcua.security import (
    PeerLog,
    Pki,
    RoleUser,
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
    RefusalReason.NO_ADDRESS: StatusCodes.BadInvalidState,
    RefusalReason.WAITING: StatusCodes.BadWaitingForInitialData,
    RefusalReason.UNKNOWN_BUS: StatusCodes.BadInvalidArgument,
    RefusalReason.INVALID_FRAME: StatusCodes.BadInvalidArgument,
    RefusalReason.UNAUTHENTICATED: StatusCodes.BadUserAccessDenied,
    RefusalReason.UNSUPPORTED: StatusCodes.BadWriteNotSupported,
    RefusalReason.AUDIT_UNAVAILABLE: StatusCodes.BadResourceUnavailable,
    RefusalReason.DEVICE_REFUSED: StatusCodes.BadDeviceFailure,
    RefusalReason.DEVICE_TIMEOUT: StatusCodes.BadTimeout,
}
# CANopen SDO aborts "cannot be stored because of local control / the present device state": the
# device is in a state that refuses the write, which OPC UA says more precisely than a device failure.
_ABORT_STATUS: dict[int, int] = {0x08000021: StatusCodes.BadInvalidState, 0x08000022: StatusCodes.BadInvalidState}


def refusal_status(e: WriteRefused) -> int:
    """The status code of a refused write: by its reason, by the device's SDO abort code where it says more."""
    if e.abort_code is not None and e.abort_code in _ABORT_STATUS:
        return _ABORT_STATUS[e.abort_code]
    return REFUSAL_STATUS.get(e.reason, StatusCodes.BadUnexpectedError)


_POLICIES: dict[tuple[str, str], ua.SecurityPolicyType] = {
    ("Basic256Sha256", "Sign"): ua.SecurityPolicyType.Basic256Sha256_Sign,
    ("Basic256Sha256", "SignAndEncrypt"): ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
    ("Aes128_Sha256_RsaOaep", "Sign"): ua.SecurityPolicyType.Aes128Sha256RsaOaep_Sign,
    ("Aes128_Sha256_RsaOaep", "SignAndEncrypt"): ua.SecurityPolicyType.Aes128Sha256RsaOaep_SignAndEncrypt,
    ("Aes256_Sha256_RsaPss", "Sign"): ua.SecurityPolicyType.Aes256Sha256RsaPss_Sign,
    ("Aes256_Sha256_RsaPss", "SignAndEncrypt"): ua.SecurityPolicyType.Aes256Sha256RsaPss_SignAndEncrypt,
}

_GOOD = status(StatusCodes.Good)
_current_session: contextvars.ContextVar[_Session | None] = contextvars.ContextVar(
    "canbridge_opcua_session", default=None
)


class _SharedValues(MonitoredItemValues):
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

_MI_CALLBACK = MONITORED_ITEM_CALLBACK
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
        if type(mis) is MONITORED_ITEM_SERVICE and getattr(cb, "__func__", None) is _MI_CALLBACK:
            found = monitored_item_lookup(mis, handle)
            mid, mdata = found if found is not None else (None, None)
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


class _Session(InternalSession):
    """A client session that routes writes, method calls and subscriptions through the service."""

    service: OpcUaService  # set on the subclass made per service
    secured: bool = True  # whether its channel signs; True when not known (the certificate is validated)

    @property
    def address(self) -> str | None:
        name = self.name
        if isinstance(name, tuple) and len(name) >= 2:
            host = str(name[0])
            return f"[{host}]:{name[1]}" if ":" in host else f"{host}:{name[1]}"
        return None if name is None else str(name)

    @property
    def user_key(self) -> str:
        """Whose quota a subscription counts against: the login, or the address of anonymous sessions."""
        name = getattr(self.user, "name", None)
        return f"user:{name}" if name else f"anonymous:{peer_host(self.name)}"

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
            return await super().write(params)
        results: list[ua.StatusCode | None] = [None] * len(nodes)
        others = [wv for wv, sig in zip(nodes, ours, strict=True) if sig is None]
        if others:  # not signal variables: asyncua's own write (refused by their access levels)
            sub = ua.WriteParameters()
            sub.NodesToWrite = others
            it = iter(await super().write(sub))
            for i, sig in enumerate(ours):
                if sig is None:
                    results[i] = next(it)
        positions = [i for i, sig in enumerate(ours) if sig is not None]
        items = [(ours[i], nodes[i]) for i in positions]
        codes = await svc.client_write(self, items)  # type: ignore[arg-type]
        for i, code in zip(positions, codes, strict=True):
            results[i] = code
        return [r if r is not None else status(StatusCodes.BadInternalError) for r in results]

    async def read(self, params: ua.ReadParameters) -> list[ua.DataValue]:
        svc = self.service
        demanded = [sig.info.name for rv in params.NodesToRead
                    if rv.AttributeId == AttributeIds.Value and (sig := svc.signal_for(rv.NodeId)) is not None
                    and sig.info.on_demand]
        if demanded:  # objects the device answers on demand (CANopen SDO): ask it before answering
            await svc.refresh(demanded)
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
            return await super().call(params)
        finally:
            _current_session.reset(token)

    def _subscriptions(self) -> tuple[list[Any], list[Any]]:
        """(this session's subscriptions, those of every session of the same user)."""
        mine, users = [], []
        key = self.user_key
        sessions = self.service.sessions
        for sub in self.subscription_service.subscriptions.values():
            owner = sessions.get(sub.session_id)
            if sub.session_id == self.session_id:
                mine.append(sub)
                users.append(sub)
            elif owner is not None and owner.user_key == key:
                users.append(sub)
        return mine, users

    async def create_subscription(
        self, params: ua.CreateSubscriptionParameters, callback: Any, request_callback: Any = None
    ) -> ua.CreateSubscriptionResult:
        lim = self.service.cfg.limits
        mine, users = self._subscriptions()
        if len(mine) >= lim.max_subscriptions_per_session or len(users) >= lim.max_subscriptions_per_user:
            self.service.peer_log.refused(
                self.name, f"subscription refused for {self.user_key}: {len(mine)} in this session, "
                f"{len(users)} of this user (max_subscriptions_per_session {lim.max_subscriptions_per_session}, "
                f"max_subscriptions_per_user {lim.max_subscriptions_per_user})")
            raise ServiceError(StatusCodes.BadTooManySubscriptions)
        floor = self.service.cfg.min_publishing_interval_ms
        if params.RequestedPublishingInterval < floor:
            params.RequestedPublishingInterval = floor
        return await super().create_subscription(params, callback, request_callback=request_callback)

    async def create_monitored_items(
        self, params: ua.CreateMonitoredItemsParameters
    ) -> list[ua.MonitoredItemCreateResult]:
        lim = self.service.cfg.limits
        mine, users = self._subscriptions()
        room = min(
            lim.max_monitored_items_per_session - sum(monitored_item_count(s) for s in mine),
            lim.max_monitored_items_per_user - sum(monitored_item_count(s) for s in users),
        )
        wanted = list(params.ItemsToCreate)
        over: list[ua.MonitoredItemCreateResult] = []
        if len(wanted) > max(room, 0):
            keep = max(room, 0)
            self.service.peer_log.refused(
                self.name, f"{len(wanted) - keep} monitored items refused for {self.user_key} "
                f"(max_monitored_items_per_session {lim.max_monitored_items_per_session}, "
                f"max_monitored_items_per_user {lim.max_monitored_items_per_user})")
            for _ in wanted[keep:]:
                res = ua.MonitoredItemCreateResult()
                res.StatusCode = status(StatusCodes.BadTooManyMonitoredItems)
                over.append(res)
            params.ItemsToCreate = wanted = wanted[:keep]
        for item in wanted:
            if item.RequestedParameters.QueueSize == 0:
                item.RequestedParameters.QueueSize = 1  # asyncua would revise 0 to 10,000
        results: list[ua.MonitoredItemCreateResult] = (
            await super().create_monitored_items(params) if wanted else []
        )
        sub = self.subscription_service.subscriptions.get(params.SubscriptionId)
        if sub is not None:
            for item, res in zip(wanted, results, strict=True):
                mdata = monitored_item_data(sub, res.MonitoredItemId) if res.StatusCode.is_good() else None
                if mdata is not None and self.service.is_fast_node(item.ItemToMonitor.NodeId):
                    shared = _SharedValues()
                    shared.current_dvalue = mdata.mvalue.current_dvalue
                    shared.old_dvalue = mdata.mvalue.old_dvalue
                    mdata.mvalue = shared
        return results + over

    async def modify_monitored_items(
        self, params: ua.ModifyMonitoredItemsParameters
    ) -> list[ua.MonitoredItemModifyResult]:
        cap = self.service.cfg.max_monitored_item_queue
        for item in params.ItemsToModify:
            q = item.RequestedParameters.QueueSize
            item.RequestedParameters.QueueSize = 1 if q == 0 else min(q, cap)
        return await super().modify_monitored_items(params)


class _Transport:
    """canbridge's transport limits for the guarded asyncua protocol (see asyncua_compat)."""

    def __init__(self, cfg: OpcUaConfig, peer_log: PeerLog, users: UserManager) -> None:
        lim = cfg.limits
        self.limits = lim
        self.max_chunk_size = lim.max_chunk_size
        self.max_queued_messages = lim.max_queued_messages
        self.handshake_timeout = lim.handshake_timeout
        self.allow_cleartext_passwords = cfg.allow_cleartext_passwords
        self.peer_log = peer_log
        self.users = users
        self.evicted = 0  # half-open connections closed to make room
        self.turned_away = 0  # connections refused at connect

    def refused(self, peer: Any, what: str) -> None:
        self.peer_log.refused(peer, what)

    def admit(self, conn: GuardedProtocol) -> bool:
        lim = self.limits
        live = [c for c in conn.clients if isinstance(c, GuardedProtocol) and not c.closed and c is not conn]
        same = [c for c in live if c.host == conn.host]
        pending_same = [c for c in same if not c.activated]
        if len(pending_same) >= lim.max_pending_per_address:
            self._evict(conn, min(pending_same, key=lambda c: c.since), "max_pending_per_address")
            same = [c for c in same if not c.closed]
            live = [c for c in live if not c.closed]
        per_address = lim.max_connections_per_address
        if not self._room(conn, same, per_address, "max_connections_per_address", " of this address"):
            return False
        return self._room(conn, [c for c in live if not c.closed], lim.max_connections, "max_connections", "")

    def _room(self, conn: GuardedProtocol, group: list[GuardedProtocol], limit: int, name: str, whose: str) -> bool:
        """At ``limit``, the oldest connection of ``group`` without a session makes room; when all have one,
        ``conn`` is refused."""
        if len(group) < limit:
            return True
        pending = [c for c in group if not c.activated]
        if not pending:
            self.turned_away += 1
            self.refused(conn.peer_name, f"connection refused: {len(group)} connections{whose} ({name} {limit})")
            return False
        self._evict(conn, min(pending, key=lambda c: c.since), name)
        return True

    def _evict(self, newcomer: GuardedProtocol, victim: GuardedProtocol, limit: str) -> None:
        """Close the oldest connection without a session, so that a client that completes its
        handshake gets in while someone holds half-open connections."""
        self.evicted += 1
        self.refused(victim.peer_name, f"closed a connection without a session to admit a new one ({limit})")
        victim.close()
        with contextlib.suppress(ValueError):
            newcomer.clients.remove(victim)

    async def check_login(self, proc: GuardedProcessor, username: str, password: str) -> LoginResult:
        user: RoleUser | None = await self.users.authenticate(proc.name, username, password)
        return LoginResult(username, password, user)


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
        self.peer_log = PeerLog(cfg.limits.refusal_log_interval)
        self.users = UserManager(cfg, self.peer_log)
        self.transport = _Transport(cfg, self.peer_log, self.users)
        self.sessions: weakref.WeakValueDictionary[ua.NodeId, _Session] = weakref.WeakValueDictionary()
        self._log_filter = False
        self.pki: Pki | None = None
        self.updates = 0  # signal values applied, for the benchmark and diagnostics
        self.dm1_nodes: Dm1Nodes | None = None  # J1939 trouble codes, nodes made as sources are heard

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
        require(iserver)  # a different asyncua: refuse to start, naming what is missing
        iserver.max_monitored_item_queue_size = cfg.max_monitored_item_queue
        lim = cfg.limits
        server.limits = TransportLimits(
            max_recv_buffer=lim.max_chunk_size,
            max_send_buffer=lim.max_chunk_size,
            max_chunk_count=lim.max_chunk_count,
            max_message_size=lim.max_message_size,
        )
        iserver.max_pending_messages_per_connection = lim.max_queued_messages
        iserver.max_connections = lim.max_connections  # canbridge's admission decides first
        iserver.max_pending_activation_seconds = 0  # canbridge's handshake deadline replaces it
        iserver.max_subscriptions = lim.max_subscriptions

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
        self.validator = TrustListValidator(
            self.pki, cfg.trust_all_clients, lim.max_rejected_certificates, lim.max_rejected_certificate_size,
            self.peer_log,
        )
        server.set_certificate_validator(self.validator)

        self.ns_index = await server.register_namespace(cfg.namespace_uri)
        added = self.bridge.subscribe_signals_added()  # before the table is read: nothing added is missed
        await self._build_address_space()
        self._install_session_factory()

        install_log_filter()
        self._log_filter = True
        try:
            with guarded_binary_server(self.transport):
                await server.start()
        except OSError as e:
            with contextlib.suppress(Exception):
                await server.stop()
            raise ListenError("opcua", cfg.listen, e.strerror or str(e), "plugins.opcua.listen") from e
        self._fix_endpoint_urls()
        self._tasks.append(asyncio.create_task(self._pump(), name="opcua-values"))
        self._tasks.append(asyncio.create_task(self._follow_added(added), name="opcua-added"))
        self._tasks.append(asyncio.create_task(self._diagnostics_loop(), name="opcua-diagnostics"))
        log.info("opcua: serving %d signals on %s", len(self._signals), ", ".join(self._endpoints))
        if secure:
            trust = "any client certificate (trust_all_clients)" if cfg.trust_all_clients else (
                f"client certificates in {self.pki.trusted}/; refused ones are kept in {self.pki.rejected}/ "
                "(move one to trusted/ to approve it)")
            log.info("opcua: PKI %s: trusts %s; server certificate %s", self.pki.root, trust, self.pki.cert)

    async def stop(self) -> None:
        if self._log_filter:
            remove_log_filter()
            self._log_filter = False
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
            session.secured = svc._channel_secured()
            svc.sessions[session.session_id] = session
            return session

        iserver.create_session = create_session  # type: ignore[method-assign]

    @staticmethod
    def _channel_secured() -> bool:
        """Whether the secure channel of the CreateSession being handled signs its messages; True
        (validate the client certificate) whenever that is not known for sure."""
        proc = current_processor()
        if proc is None:
            return True
        try:
            return bool(proc.secured)
        except Exception:  # an internal changed: the safe side
            log.warning("opcua: cannot tell the security mode of %s; validating its certificate", proc.name)
            return True

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
        plan = Plan()
        aspace = self.server.iserver.aspace
        items = generate(
            plan, self.ns_index, dict(b.buses), dict(b.messages), dict(b.signals), self.cfg.update_interval * 1000
        )
        BulkAdder(aspace, plan.mutable).add(items)
        self._adopt(plan)
        self.dm1_nodes = Dm1Nodes(b, aspace, self.ns_index, self.cfg.dm1_stale_after_s, notify)
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
            [
                _argument("sent", ObjectIds.String, "the frame as sent (cansend string); empty when refused"),
                _argument("detail", ObjectIds.String, "why the frame was refused; empty when sent"),
            ],
        )
        # initial state: quality and value of everything before the first batch arrives
        await self.apply(b.read_many())
        await self.update_diagnostics()

    def _adopt(self, plan: Plan) -> None:
        """Take the variables of nodes just added into the update path (their Value attributes)."""
        assert self.server is not None
        aspace = self.server.iserver.aspace
        for node in plan.signals.values():
            node.attval = aspace[node.nodeid].attributes[AttributeIds.Value]
            if node.choice_text_nodeid is not None:
                node.text_attval = aspace[node.choice_text_nodeid].attributes[AttributeIds.Value]
                self._fast.add(node.choice_text_nodeid)
            self._by_nodeid[node.nodeid] = node
            self._fast.add(node.nodeid)
            self._signals[node.info.name] = node
        for key, (diag_id, vt) in plan.diag.items():
            self._diag[key] = (aspace[diag_id].attributes[AttributeIds.Value], vt)
            self._fast.add(diag_id)

    async def _follow_added(self, added: SignalsAddedSubscription) -> None:
        """Nodes for signals added at run time (J1939 senders heard), as soon as the bridge has them."""
        async with added:
            async for batch in added:
                try:
                    await self.add_signals(batch)
                except Exception:  # one batch that cannot be added must not end the others
                    log.exception("opcua: adding nodes for %d new signals failed", len(batch))

    async def add_signals(self, signals: Sequence[SignalInfo]) -> None:
        """Add the nodes of ``signals`` (those not in the address space yet) and give them their values."""
        assert self.server is not None
        new = [s for s in signals if s.name not in self._signals]
        if not new:
            return
        aspace = self.server.iserver.aspace
        plan = Plan()
        items = added_items(plan, self.ns_index, dict(self.bridge.messages), new, aspace.__contains__,
                            self.cfg.update_interval * 1000)
        BulkAdder(aspace, plan.mutable).add(items)
        self._adopt(plan)
        log.info("opcua: %d nodes added for new signals (%s, ...)", len(new), new[0].name)
        # values that came before the nodes: later ones arrive through the pump's subscription of all
        await self.apply(self.bridge.read_many([s.name for s in new]))

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

    async def refresh(self, names: list[str]) -> None:
        """``Bridge.refresh`` of on-demand signals (the cache answers at once while fresh, else one upload
        each, waited for up to the node's SDO timeout), their values put into the address space, so the
        Read that asked answers with what the device said, or Bad with the reason's status."""
        try:
            values = await asyncio.gather(*(self.bridge.refresh(n) for n in dict.fromkeys(names)))
        except CanbridgeError as e:
            log.warning("opcua: reading %s from the device failed: %s", ", ".join(names), e)
            return
        await self.apply(values)

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
                await io_turn()  # a batch of many thousand changes must not hold up client requests
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
            if self.dm1_nodes is not None:
                await self.dm1_nodes.update(bus, st, now)
        stats = self.bridge.stats()
        await self._set_diag(bridge_diag_key("AuditAvailable"), stats.audit_available, now)
        await self._set_diag(bridge_diag_key("AuditError"), stats.audit_error or "", now)
        await self._set_diag(bridge_diag_key("AuditFailures"), stats.audit_failures, now)
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

    async def client_write(
        self, session: _Session, items: Sequence[tuple[SignalNode, ua.WriteValue]]
    ) -> list[ua.StatusCode]:
        """A client's Write request to signal variables: all or nothing through the write path.

        The plugin only translates: the decoded Variant value goes to the bridge as it is (the write
        path judges type, range and permission, and audits each refusal). What the bridge cannot take
        in any form (another attribute than Value, an IndexRange) is refused here with
        ``bridge.refuse(UNSUPPORTED)``, which audits it too. When one item is refused nothing is sent:
        that item gets its refusal's StatusCode and every other item ``BadOperationAbandoned``.
        """
        caller = session.caller(frozenset({Permission.WRITE}))
        names = [node.info.name for node, _ in items]
        values = [_decoded(wv) for _, wv in items]
        codes: list[ua.StatusCode | None] = [None] * len(items)
        first: int | None = None
        for i, (_node, wv) in enumerate(items):
            form = _unsupported_form(wv)
            if form is not None:
                code, detail = form
                self.bridge.refuse(names[i], values[i], caller, RefusalReason.UNSUPPORTED, detail)
                codes[i] = status(code)
                first = i if first is None else first
        if first is not None:
            for i in range(len(items)):
                if codes[i] is None:
                    self.bridge.refuse(names[i], values[i], caller, RefusalReason.UNSUPPORTED,
                                       f"not sent: item {first} of this Write request was refused")
            log.info("opcua: write of %s by %s refused: unsupported write form", ", ".join(names), caller)
            return [c if c is not None else status(StatusCodes.BadOperationAbandoned) for c in codes]
        try:
            if len(items) == 1:
                await self.bridge.write(names[0], values[0], caller)
            else:
                await self.bridge.write_many(list(zip(names, values, strict=True)), caller)
        except WriteRefused as e:
            log.info("opcua: write of %s by %s refused: %s", e.target or ", ".join(names), caller, e.detail)
            return self._refused_codes(items, e)
        except UnknownSignal:
            return [status(StatusCodes.BadNodeIdUnknown)] * len(items)
        except CanbridgeError as e:
            log.warning("opcua: write of %s by %s failed: %s", ", ".join(names), caller, e)
            return [status(StatusCodes.BadCommunicationError)] * len(items)
        # show the accepted values now rather than one update interval later
        with contextlib.suppress(CanbridgeError):
            await self.apply([self.bridge.read(n) for n in dict.fromkeys(names)])
        return [status(StatusCodes.Good)] * len(items)

    @staticmethod
    def _refused_codes(items: Sequence[tuple[SignalNode, ua.WriteValue]], e: WriteRefused) -> list[ua.StatusCode]:
        refused = e.index if e.index is not None else 0
        code = status(refusal_status(e))
        abandoned = status(StatusCodes.BadOperationAbandoned)
        if e.reason is not RefusalReason.BUS_DOWN or len(items) == 1:
            return [code if i == refused else abandoned for i in range(len(items))]
        # A bus failed while sending: the messages before the failing one went out (the write path
        # sends one frame per message, in the order the request first names them).
        def key(i: int) -> tuple[str, str]:
            info = items[i][0].info
            return info.bus, info.message

        order = list(dict.fromkeys(key(i) for i in range(len(items))))
        failed_at = order.index(key(refused))
        out = []
        for i in range(len(items)):
            pos = order.index(key(i))
            out.append(status(StatusCodes.Good) if pos < failed_at else code if pos == failed_at else abandoned)
        return out

    async def _send_frame_method(self, parent: ua.NodeId, bus: ua.Variant, frame: ua.Variant) -> Any:
        """The raw arguments go to ``bridge.send_frame`` as they are; a refusal comes back as a bad
        StatusCode, the argument at fault marked in InputArgumentResults, and its reason as the
        ``detail`` output argument (also as the DiagnosticInfo of the argument)."""
        bus_v: Any = bus.Value if isinstance(bus, ua.Variant) else bus
        frame_v: Any = frame.Value if isinstance(frame, ua.Variant) else frame
        session = _current_session.get()
        if session is None:
            anonymous = Caller(plugin="opcua", user=None, address=None, permissions=frozenset())
            e = self.bridge.refuse(f"{bus_v} (raw frame)", frame_v, anonymous, RefusalReason.UNAUTHENTICATED,
                                   "SendFrame outside a client session")
            return _call_refused(e.reason, e.detail)
        caller = session.caller(frozenset({Permission.RAW}))
        try:
            sent = await self.bridge.send_frame(bus_v, frame_v, caller)
        except WriteRefused as e:
            log.info("opcua: SendFrame %r %r by %s refused: %s", bus_v, frame_v, caller, e.detail)
            return _call_refused(e.reason, e.detail)
        except FrameFormatError as e:  # audited by the write path as invalid_frame
            log.info("opcua: SendFrame %r %r by %s refused: %s", bus_v, frame_v, caller, e)
            return _call_refused(RefusalReason.INVALID_FRAME, str(e))
        except CanbridgeError as e:
            log.warning("opcua: SendFrame by %s failed: %s", caller, e)
            res = _call_refused(RefusalReason.BUS_DOWN, str(e))
            res.StatusCode = status(StatusCodes.BadCommunicationError)
            return res
        return [ua.Variant(sent.to_cansend(), ua.VariantType.String), ua.Variant("", ua.VariantType.String)]

    @property
    def pki_root(self) -> Path | None:
        return self.pki.root if self.pki else None

    @property
    def bound_port(self) -> int | None:
        return self._bound[1] if self._bound else None


def _decoded(wv: ua.WriteValue) -> Any:
    """The client's value as decoded from its Variant (texts of LocalizedText), not judged."""
    dv = wv.Value
    variant = dv.Value if dv is not None else None
    if variant is None:
        return None
    value = variant.Value
    if isinstance(value, ua.LocalizedText):
        return value.Text
    if isinstance(value, list):
        return [v.Text if isinstance(v, ua.LocalizedText) else v for v in value]
    return value


def _unsupported_form(wv: ua.WriteValue) -> tuple[int, str] | None:
    """(StatusCode, detail) for a write the bridge cannot take in any form, else None."""
    if wv.AttributeId != AttributeIds.Value:
        try:
            attr = AttributeIds(wv.AttributeId).name
        except ValueError:
            attr = str(wv.AttributeId)
        return StatusCodes.BadNotWritable, f"write of the {attr} attribute (only Value is writable)"
    if wv.IndexRange:
        return StatusCodes.BadIndexRangeInvalid, f"write with IndexRange {wv.IndexRange!r} (signals are scalars)"
    return None


_ARG_AT_FAULT = {RefusalReason.UNKNOWN_BUS: 0, RefusalReason.INVALID_FRAME: 1}


def _call_refused(reason: RefusalReason, detail: str) -> ua.CallMethodResult:
    res = ua.CallMethodResult()
    res.StatusCode = status(REFUSAL_STATUS.get(reason, StatusCodes.BadUnexpectedError))
    at = _ARG_AT_FAULT.get(reason)
    res.InputArgumentResults = [
        status(StatusCodes.BadInvalidArgument if i == at else StatusCodes.Good) for i in range(2)
    ]
    if at is not None:
        diag = ua.DiagnosticInfo()
        diag.AdditionalInfo = cast(Any, detail)
        res.InputArgumentDiagnosticInfos = [diag if i == at else ua.DiagnosticInfo() for i in range(2)]
    text = f"{reason.value}: {detail}"
    res.OutputArguments = [ua.Variant("", ua.VariantType.String), ua.Variant(text, ua.VariantType.String)]
    return res


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
