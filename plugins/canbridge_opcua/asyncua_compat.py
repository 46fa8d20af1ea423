"""Every use of asyncua internals (anything its documentation does not promise), in one module.

canbridge pins asyncua 2.1.x. What it needs from the library's inside is listed in :data:`CHECKS` and
checked at import; :func:`require` raises :class:`canbridge.PluginError` naming each missing internal
when the plugin starts, so a different asyncua fails loudly instead of silently dropping a check.
Everything here fails **closed**: when an internal is missing at run time the connection is treated
as secured (its client certificate is validated), a login as refused, a request as refused.

What it hooks (no patch to asyncua's classes; subclasses made per server):

* :class:`GuardedProtocol` (an ``OPCUAProtocol``): admission per address and in total, the chunk
  header checked against ``max_chunk_size`` before the body is read, a bounded queue, a handshake
  deadline, one rate-limited log line per refused peer instead of tracebacks.
* :class:`GuardedProcessor` (a ``UaProcessor``): records the channel's security mode from its
  OpenSecureChannel request, refuses RegisterServer/RegisterServer2, verifies passwords off the
  event loop before asyncua's synchronous ActivateSession runs, turns exceptions into one line.
* The value pump's fast path into ``MonitoredItemService`` (see ``_service.notify``).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import logging
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from types import SimpleNamespace
from typing import Any, Protocol, cast

from asyncua import ua
from asyncua.common.connection import TransportLimits
from asyncua.common.utils import Buffer
from asyncua.server import binary_server_asyncio as _bsa
from asyncua.server import internal_server as _isrv
from asyncua.server import internal_session as _isess
from asyncua.server import internal_subscription as _isub
from asyncua.server import monitored_item_service as _mis
from asyncua.server import server as _server_mod
from asyncua.server import uaprocessor as _uap
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.status_codes import StatusCodes
from asyncua.ua.ua_binary import header_from_binary, nodeid_from_binary, struct_from_binary, uatcp_to_binary

from canbridge import PluginError

log = logging.getLogger("canbridge.opcua")

# --- what canbridge relies on ---------------------------------------------------------------------


def _params(func: Any) -> list[str]:
    return list(inspect.signature(func).parameters)


def _method(cls: type, name: str, params: list[str] | None = None) -> Callable[[], bool]:
    def check() -> bool:
        f = getattr(cls, name, None)
        if not callable(f):
            return False
        return params is None or _params(f)[: len(params)] == params

    return check


def _module_attr(mod: Any, name: str, value: Any) -> Callable[[], bool]:
    return lambda: getattr(mod, name, None) is value


CHECKS: list[tuple[str, Callable[[], bool]]] = [
    ("asyncua.server.server.BinaryServer (the name Server.start builds)",
     _module_attr(_server_mod, "BinaryServer", _bsa.BinaryServer)),
    ("BinaryServer._make_protocol()", _method(_bsa.BinaryServer, "_make_protocol", ["self"])),
    ("OPCUAProtocol(iserver, policies, clients, closing_tasks, limits)",
     _method(_bsa.OPCUAProtocol, "__init__", ["self", "iserver", "policies", "clients", "closing_tasks", "limits"])),
    ("OPCUAProtocol.connection_made(transport)", _method(_bsa.OPCUAProtocol, "connection_made", ["self", "transport"])),
    ("OPCUAProtocol.connection_lost(ex)", _method(_bsa.OPCUAProtocol, "connection_lost", ["self", "ex"])),
    ("OPCUAProtocol._process_received_message_loop()",
     _method(_bsa.OPCUAProtocol, "_process_received_message_loop", ["self"])),
    ("UaProcessor(internal_server, transport, limits)",
     _method(_uap.UaProcessor, "__init__", ["self", "internal_server", "transport", "limits"])),
    ("UaProcessor.process(header, body)", _method(_uap.UaProcessor, "process", ["self", "header", "body"])),
    ("UaProcessor.process_message(seqhdr, body)",
     _method(_uap.UaProcessor, "process_message", ["self", "seqhdr", "body"])),
    ("UaProcessor.open_secure_channel(algohdr, seqhdr, body)",
     _method(_uap.UaProcessor, "open_secure_channel", ["self", "algohdr", "seqhdr", "body"])),
    ("UaProcessor.send_response(requesthandle, seqhdr, response)",
     _method(_uap.UaProcessor, "send_response", ["self", "requesthandle", "seqhdr", "response"])),
    ("InternalServer.decrypt_user_token(isession, token)",
     _method(_isrv.InternalServer, "decrypt_user_token", ["self", "isession", "token"])),
    ("InternalServer.lookup_external_session(auth_token)",
     _method(_isrv.InternalServer, "lookup_external_session", ["self", "auth_token"])),
    ("InternalServer.create_session(name, user, external)",
     _method(_isrv.InternalServer, "create_session", ["self", "name", "user", "external"])),
    ("InternalSession.activate_session(params, peer_certificate)",
     _method(_isess.InternalSession, "activate_session", ["self", "params", "peer_certificate"])),
    ("InternalSession.create_session(params, sockname)",
     _method(_isess.InternalSession, "create_session", ["self", "params", "sockname"])),
    ("MonitoredItemService.datachange_callback(handle, value)",
     _method(_mis.MonitoredItemService, "datachange_callback", ["self", "handle", "value"])),
    ("MonitoredItemValues.set_current_datavalue", _method(_mis.MonitoredItemValues, "set_current_datavalue")),
    ("InternalSubscription.monitored_item_srv",
     lambda: "self.monitored_item_srv" in inspect.getsource(_isub.InternalSubscription.__init__)),
    ("InternalSubscription.session_id", lambda: "self.session_id" in inspect.getsource(_isub.InternalSubscription)),
]

# instance attributes, checked on real objects when the server is built (see require())
_ISERVER_ATTRS = (
    "max_connections", "max_pending_activation_seconds", "max_pending_messages_per_connection",
    "max_subscriptions", "subscription_service", "asyncio_transports", "user_manager",
)
_PROCESSOR_ATTRS = ("session", "name", "iserver", "_transport")
_BSERVER_ATTRS = ("_policies", "clients", "closing_tasks", "limits", "iserver")
_PROTOCOL_ATTRS = ("processor", "messages", "transport", "clients", "iserver", "policies", "limits", "peer_name")
_MIS_ATTRS = ("_monitored_items", "_monitored_datachange", "isub")


def problems(iserver: Any = None) -> list[str]:
    """The internals that are missing or changed shape (empty when this asyncua is usable)."""
    out = [name for name, check in CHECKS if not _safe(check)]
    if iserver is not None:
        out += [f"InternalServer.{a}" for a in _ISERVER_ATTRS if not hasattr(iserver, a)]
        out += _instance_problems(iserver)
    return out


def _safe(check: Callable[[], bool]) -> bool:
    try:
        return bool(check())
    except Exception:
        return False


class _NullTransport:
    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("0.0.0.0", 0) if name in ("peername", "sockname") else default

    def write(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        pass


def _instance_problems(iserver: Any) -> list[str]:
    out: list[str] = []
    try:
        proto = _bsa.OPCUAProtocol(iserver=iserver, policies=[], clients=[], closing_tasks=[], limits=TransportLimits())
        out += [f"OPCUAProtocol.{a}" for a in _PROTOCOL_ATTRS if not hasattr(proto, a)]
    except Exception as e:
        out.append(f"OPCUAProtocol(...) ({e})")
    try:
        proc = _uap.UaProcessor(iserver, _NullTransport(), TransportLimits())
        out += [f"UaProcessor.{a}" for a in _PROCESSOR_ATTRS if not hasattr(proc, a)]
    except Exception as e:
        out.append(f"UaProcessor(...) ({e})")
    try:
        bserver = _bsa.BinaryServer(iserver, "127.0.0.1", 0, TransportLimits())
        out += [f"BinaryServer.{a}" for a in _BSERVER_ATTRS if not hasattr(bserver, a)]
    except Exception as e:
        out.append(f"BinaryServer(...) ({e})")
    try:
        isub = SimpleNamespace(data=SimpleNamespace(SubscriptionId=0))
        mis = _mis.MonitoredItemService(cast(Any, isub), iserver.aspace)
        out += [f"MonitoredItemService.{a}" for a in _MIS_ATTRS if not hasattr(mis, a)]
    except Exception as e:
        out.append(f"MonitoredItemService(...) ({e})")
    return out


def asyncua_version() -> str:
    try:
        return metadata.version("asyncua")
    except metadata.PackageNotFoundError:  # pragma: no cover
        return "unknown"


IMPORT_PROBLEMS = problems()  # the class-level checks, once at import


def require(iserver: Any) -> None:
    """Raise :class:`PluginError` naming every missing internal (at plugin start)."""
    missing = problems(iserver)
    if missing:
        raise PluginError(
            f"opcua: asyncua {asyncua_version()} lacks internals canbridge relies on: {'; '.join(missing)}. "
            "canbridge supports asyncua 2.1.x (see plugins/canbridge_opcua/asyncua_compat.py)"
        )


# --- the hooks the service provides ---------------------------------------------------------------


class TransportHooks(Protocol):
    """What :class:`GuardedProtocol` and :class:`GuardedProcessor` ask the service."""

    max_chunk_size: int
    max_queued_messages: int
    handshake_timeout: float
    allow_cleartext_passwords: bool

    def admit(self, conn: GuardedProtocol) -> bool: ...

    def refused(self, peer: Any, what: str) -> None: ...

    async def check_login(self, proc: GuardedProcessor, username: str, password: str) -> LoginResult: ...


@dataclass(frozen=True)
class LoginResult:
    """A login checked before asyncua's synchronous ActivateSession asks the user manager."""

    username: str
    password: str
    user: Any  # the user to return, or None
    status: int | None = None  # a StatusCode to answer with instead of BadUserAccessDenied


_current_processor: contextvars.ContextVar[GuardedProcessor | None] = contextvars.ContextVar(
    "canbridge_opcua_processor", default=None
)


def current_processor() -> GuardedProcessor | None:
    """The processor whose request is being handled (asyncua calls our hooks synchronously from it)."""
    return _current_processor.get()


def peer_host(peer: Any) -> str:
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return str(peer)


def _nodeid(identifier: int) -> ua.NodeId:
    return ua.NodeId(cast(Any, identifier))


def _status(code: int) -> ua.StatusCode:
    return ua.StatusCode(cast(Any, code))


_HEADER = struct.Struct("<3scI")
_SECURE_TYPES = (b"OPN", b"MSG", b"CLO")
_KNOWN_TYPES = (b"HEL", b"OPN", b"MSG", b"CLO", b"ERR", b"ACK", b"RHE")
_ACTIVATE = _nodeid(ObjectIds.ActivateSessionRequest_Encoding_DefaultBinary)
_REGISTER = (
    _nodeid(ObjectIds.RegisterServerRequest_Encoding_DefaultBinary),
    _nodeid(ObjectIds.RegisterServer2Request_Encoding_DefaultBinary),
)


def _error_message(code: int, reason: str) -> bytes:
    return uatcp_to_binary(cast(Any, ua.MessageType.Error), ua.ErrorMessage(_status(code), cast(Any, reason)))


class GuardedProcessor(_uap.UaProcessor):
    """asyncua's processor with canbridge's checks in front of it (see the module docstring)."""

    hooks: TransportHooks  # set on the subclass made per server

    def __init__(self, internal_server: Any, transport: Any, limits: TransportLimits) -> None:
        super().__init__(internal_server, transport, limits)
        # None until the OpenSecureChannel request said it; unknown counts as secured (fail closed)
        self.channel_mode: ua.MessageSecurityMode | None = None
        self.channel_policy_uri: str | None = None
        self.login: LoginResult | None = None

    @property
    def secured(self) -> bool:
        """Whether the channel signs its messages; True when not known (the client certificate is
        then validated: the safe side)."""
        if self.channel_mode is None or self.channel_policy_uri is None:
            return True
        return not (self.channel_mode == ua.MessageSecurityMode.None_ and self.channel_policy_uri.endswith("#None"))

    @property
    def encrypted(self) -> bool:
        return self.channel_mode == ua.MessageSecurityMode.SignAndEncrypt

    async def process(self, header: Any, body: Any) -> bool:
        token = _current_processor.set(self)
        try:
            sup: Any = super()
            return bool(await sup.process(header, body))
        except Exception as e:  # malformed input: one line (rate-limited), no traceback; close
            self.hooks.refused(self.name, f"malformed {_mtype(header)} message ({type(e).__name__}: {e})")
            with contextlib.suppress(Exception):
                self._transport.write(_error_message(StatusCodes.BadDecodingError, "malformed message"))
            return False
        finally:
            _current_processor.reset(token)

    def open_secure_channel(self, algohdr: Any, seqhdr: Any, body: Any) -> None:
        if self.channel_mode is None:
            request = struct_from_binary(ua.OpenSecureChannelRequest, body.copy())
            self.channel_mode = request.Parameters.SecurityMode
            self.channel_policy_uri = str(algohdr.SecurityPolicyURI or "")
        sup: Any = super()
        sup.open_secure_channel(algohdr, seqhdr, body)

    async def process_message(self, seqhdr: Any, body: Any) -> Any:
        peek = body.copy()
        typeid = nodeid_from_binary(peek)
        if typeid in _REGISTER:
            requesthdr = struct_from_binary(ua.RequestHeader, peek)
            self.hooks.refused(self.name, "RegisterServer refused: canbridge is not a discovery server")
            fault = ua.ServiceFault()
            fault.ResponseHeader.ServiceResult = _status(StatusCodes.BadServiceUnsupported)
            sender: Any = self
            sender.send_response(requesthdr.RequestHandle, seqhdr, fault)
            return True
        self.login = None
        if typeid == _ACTIVATE:
            requesthdr = struct_from_binary(ua.RequestHeader, peek)
            params = struct_from_binary(ua.ActivateSessionParameters, peek)
            await self._check_login(requesthdr, params)
        try:
            sup: Any = super()
            return await sup.process_message(seqhdr, body)
        finally:
            self.login = None

    async def _check_login(self, requesthdr: Any, params: Any) -> None:
        token = params.UserIdentityToken
        if not isinstance(token, ua.UserNameIdentityToken):
            return
        session = self.session or self.iserver.lookup_external_session(requesthdr.AuthenticationToken)
        if session is None or getattr(session, "nonce", None) is None:
            return  # asyncua refuses it (BadSessionIdInvalid) without asking the user manager
        clear = not token.EncryptionAlgorithm
        if clear and not self.encrypted and not self.hooks.allow_cleartext_passwords:
            name = str(token.UserName)
            self.hooks.refused(self.name, f"login of {name!r} refused: clear-text password on a channel "
                               "that does not encrypt (allow_cleartext_passwords is false)")
            pw = token.Password.decode("utf-8", "replace") if isinstance(token.Password, bytes) else str(token.Password)
            self.login = LoginResult(name, pw, None, StatusCodes.BadSecurityModeInsufficient)
            return
        try:
            username, password = self.iserver.decrypt_user_token(session, token)
        except Exception:
            return  # asyncua decrypts again and answers BadIdentityTokenInvalid
        self.login = await self.hooks.check_login(self, username, password)


def checked_login(username: str | None, password: str | None) -> LoginResult | None:
    """The login :class:`GuardedProcessor` verified for this ActivateSession, or None."""
    proc = _current_processor.get()
    login = proc.login if proc is not None else None
    if login is None or login.username != username or login.password != password:
        return None
    return login


def _mtype(header: Any) -> str:
    t = getattr(header, "MessageType", b"?")
    return t.decode("ascii", "replace") if isinstance(t, bytes) else str(t)


class GuardedProtocol(_bsa.OPCUAProtocol):
    """asyncua's per-connection protocol with canbridge's transport limits."""

    hooks: TransportHooks  # set on the subclass made per server
    processor_class: type[GuardedProcessor]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.since = time.monotonic()
        self.host = ""
        self.closed = False
        self._rx = bytearray()
        self._deadline: asyncio.TimerHandle | None = None

    @property
    def activated(self) -> bool:
        session = getattr(self.processor, "session", None)
        return session is not None and session.is_activated()

    def connection_made(self, transport: Any) -> None:
        self.peer_name = transport.get_extra_info("peername")
        self.host = peer_host(self.peer_name)
        if not self.hooks.admit(self):
            self.closed = True
            transport.close()
            return
        super().connection_made(transport)
        if self.processor is None:  # asyncua refused it itself
            self.closed = True
            return
        proc = self.processor_class(self.iserver, self.transport, self.limits)
        cast(Any, proc).set_policies(self.policies)
        self.processor = proc
        self._deadline = asyncio.get_running_loop().call_later(self.hooks.handshake_timeout, self._handshake_over)

    def _handshake_over(self) -> None:
        if not self.closed and not self.activated:
            self.hooks.refused(self.peer_name, f"no session activated within {self.hooks.handshake_timeout:g} s")
            self.close()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, ex: BaseException | None) -> None:
        self.closed = True
        if self._deadline is not None:
            self._deadline.cancel()
        super().connection_lost(ex)

    def data_received(self, data: bytes) -> None:
        if self.closed or self.transport is None:
            return
        rx = self._rx
        rx += data
        limit = self.hooks.max_chunk_size
        while len(rx) >= 8:
            mtype, _chunk, size = _HEADER.unpack_from(rx)
            if mtype not in _KNOWN_TYPES or size < (12 if mtype in _SECURE_TYPES else 8):
                self._refuse(StatusCodes.BadTcpMessageTypeInvalid, f"malformed header {bytes(rx[:8])!r}")
                return
            if size > limit:  # before reading the body: nothing of it is buffered
                self._refuse(StatusCodes.BadTcpMessageTooLarge,
                             f"{mtype.decode()} chunk of {size} bytes announced (max_chunk_size {limit})")
                return
            if len(rx) < size:
                return
            packet = bytes(rx[:size])
            del rx[:size]
            try:
                header = header_from_binary(Buffer(packet))
                body = Buffer(packet, header.header_size, header.body_size)
            except Exception as e:
                self._refuse(StatusCodes.BadTcpMessageTypeInvalid, f"malformed header ({e})")
                return
            try:
                self.messages.put_nowait((header, body))
            except asyncio.QueueFull:
                self._refuse(StatusCodes.BadTcpNotEnoughResources,
                             f"more than {self.messages.maxsize} chunks waiting to be processed")
                return

    def _refuse(self, code: int, what: str) -> None:
        self.hooks.refused(self.peer_name, what)
        self._rx.clear()
        if self.transport is not None:
            with contextlib.suppress(Exception):
                self.transport.write(_error_message(code, what))
        self.close()


class _GuardedBinaryServer(_bsa.BinaryServer):
    protocol_class: type[GuardedProtocol]

    def _make_protocol(self) -> GuardedProtocol:
        return self.protocol_class(
            iserver=self.iserver,
            policies=self._policies,
            clients=self.clients,
            closing_tasks=self.closing_tasks,
            limits=self.limits,
        )


@contextlib.contextmanager
def guarded_binary_server(hooks: TransportHooks) -> Iterator[None]:
    """While ``Server.start()`` runs, the BinaryServer it builds is canbridge's guarded one."""
    proc_cls = type("CanbridgeProcessor", (GuardedProcessor,), {"hooks": hooks})
    proto_cls = type("CanbridgeProtocol", (GuardedProtocol,), {"hooks": hooks, "processor_class": proc_cls})
    server_cls = type("CanbridgeBinaryServer", (_GuardedBinaryServer,), {"protocol_class": proto_cls})
    mod: Any = _server_mod
    original = mod.BinaryServer
    mod.BinaryServer = server_cls
    try:
        yield
    finally:
        mod.BinaryServer = original


def protocols(bserver: Any) -> list[GuardedProtocol]:
    return [c for c in getattr(bserver, "clients", []) if isinstance(c, GuardedProtocol)]


# --- subscriptions and the fast value path ---------------------------------------------------------


def monitored_item_count(sub: Any) -> int:
    return len(sub.monitored_item_srv._monitored_items)


def monitored_item_data(sub: Any, item_id: int) -> Any:
    return sub.monitored_item_srv._monitored_items.get(item_id)


def monitored_item_lookup(mis: Any, handle: int) -> tuple[Any, Any] | None:
    """(monitored item id, its data) of a data-change handle of ``mis``, or None."""
    mid = mis._monitored_datachange.get(handle)
    if mid is None:
        return None
    mdata = mis._monitored_items.get(mid)
    return None if mdata is None else (mid, mdata)


MONITORED_ITEM_SERVICE = _mis.MonitoredItemService
MONITORED_ITEM_CALLBACK = _mis.MonitoredItemService.datachange_callback
MonitoredItemValues = _mis.MonitoredItemValues


# --- asyncua's log lines that repeat canbridge's ---------------------------------------------------

# (logger, start of the message format): lowered to DEBUG; canbridge logs its own line (rate-limited
# per peer, without traceback) for each of these.
DUPLICATES: tuple[tuple[str, str], ...] = (
    ("asyncua.server.uaprocessor", "sending service fault response"),
    ("asyncua.server.uaprocessor", "Error while processing message"),
    ("asyncua.server.uaprocessor", "Received request that exceed the transport limits"),
    ("asyncua.server.uaprocessor", "Received a request of type %d without an existing session"),
    ("asyncua.server.uaprocessor", "Unauthenticated user attempted to connect"),
    ("asyncua.server.uaprocessor", "%s attempted to do something they are not permitted to do"),
    ("asyncua.common.connection", "Message size: %s is > "),
    ("asyncua.common.connection", "Number of message chunks: %s is > "),
    ("asyncua.server.internal_session", "Rejected active session UserIdentityToken not supported"),
    ("asyncua.server.binary_server_asyncio", "Refusing connection from %s"),
    ("asyncua.server.binary_server_asyncio", "Inbound queue full for"),
)


class DuplicateFilter(logging.Filter):
    """Lowers asyncua's records that repeat a canbridge warning to DEBUG; for the malformed-request
    traceback of the processor it logs canbridge's rate-limited line for that peer instead."""

    def __init__(self) -> None:
        super().__init__("canbridge-asyncua-duplicates")
        self._known: dict[str, tuple[str, ...]] = {}
        for logger, prefix in DUPLICATES:
            self._known[logger] = (*self._known.get(logger, ()), prefix)

    def filter(self, record: logging.LogRecord) -> bool:
        prefixes = self._known.get(record.name)
        if not prefixes or record.levelno <= logging.DEBUG or not str(record.msg).startswith(prefixes):
            return True
        if record.exc_info and record.exc_info[1] is not None:
            proc = _current_processor.get()
            if proc is not None:
                exc = record.exc_info[1]
                proc.hooks.refused(proc.name, f"malformed request ({type(exc).__name__}: {exc})")
            record.exc_info = None
            record.exc_text = None
        record.levelno = logging.DEBUG
        record.levelname = "DEBUG"
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


_FILTER = DuplicateFilter()
_filter_users = 0


def install_log_filter() -> None:
    """Attach the filter to asyncua's loggers (once, however many servers run)."""
    global _filter_users
    _filter_users += 1
    if _filter_users == 1:
        for name in {n for n, _ in DUPLICATES}:
            logging.getLogger(name).addFilter(_FILTER)


def remove_log_filter() -> None:
    global _filter_users
    _filter_users = max(0, _filter_users - 1)
    if _filter_users == 0:
        for name in {n for n, _ in DUPLICATES}:
            logging.getLogger(name).removeFilter(_FILTER)
