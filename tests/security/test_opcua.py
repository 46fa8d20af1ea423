"""Attack classes against the OPC UA server, before and after login (issue #9, findings 5-8).

Raw sockets send hand-built UA binary headers; the asyncua client stands for a legitimate client.
Memory bounds are asserted with wide margins only; latencies and timings are printed, not asserted.
"""

# The OPC UA fixtures come from tests/plugins/opcua/conftest.py, imported by name: F811 flags each use.
# ruff: noqa: F811

from __future__ import annotations

import asyncio
import contextlib
import logging
import statistics
import struct
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, cast

import canbridge_opcua.config as opcua_config_module
import pytest
from asyncua import ua
from asyncua.client.client import Client
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.status_codes import StatusCodes
from asyncua.ua.ua_binary import nodeid_to_binary, struct_to_binary, uatcp_to_binary
from asyncua.ua.uaerrors import UaStatusCodeError
from canbridge_opcua.config import hash_password

from canbridge.testing import until
from tests.plugins.opcua.conftest import (  # noqa: F401 - fixtures, used by name
    OPERATOR,
    READER,
    make_client_cert,
    ns_index,
    opcua_config,
    pki_dir,
    pki_seed,
    running,
    status_name,
    users,
)
from tests.plugins.opcua.uatypes import nid

Cfg = Callable[..., dict[str, Any]]
SPEED = "demo.MotorStatus.MotorSpeed"
MiB = 1024 * 1024


def rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def host_port(url: str) -> tuple[str, int]:
    hp = url.removeprefix("opc.tcp://")
    host, port = hp.rsplit(":", 1)
    return host.strip("[]"), int(port)


def hello(url: str) -> bytes:
    h = ua.Hello()
    h.EndpointUrl = url  # type: ignore[assignment]
    return uatcp_to_binary(cast(Any, ua.MessageType.Hello), h)


def header(mtype: bytes, size: int, chunk: bytes = b"F", channel: int | None = 0) -> bytes:
    out = mtype + chunk + struct.pack("<I", size)
    return out + (struct.pack("<I", channel) if channel is not None else b"")


async def read_all(reader: asyncio.StreamReader, timeout: float = 10.0) -> bytes:
    """Everything the server sends until it closes the connection."""
    out = b""
    with contextlib.suppress(ConnectionError):
        while True:
            chunk = await asyncio.wait_for(reader.read(65536), timeout)
            if not chunk:
                break
            out += chunk
    return out


def error_code(data: bytes) -> str | None:
    """The StatusCode name of an ERR message among the bytes the server sent."""
    i = data.find(b"ERRF")
    if i < 0:
        return None
    (code,) = struct.unpack_from("<I", data, i + 8)
    return ua.StatusCode(code).name


@contextlib.asynccontextmanager
async def raw(url: str) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection(*host_port(url))
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


@contextlib.asynccontextmanager
async def open_channel(url: str) -> AsyncIterator[Client]:
    """A None secure channel and no session (what anyone on the network can have)."""
    client = Client(url, timeout=10)
    await client.connect_socket()
    try:
        await client.send_hello()
        await client.open_secure_channel()
        yield client
    finally:
        with contextlib.suppress(Exception):
            client.disconnect_socket()


async def timed_read(url: str, user: tuple[str, str] | None = OPERATOR) -> float:
    t0 = time.perf_counter()
    client = Client(url, timeout=10)
    if user:
        client.set_user(user[0])
        client.set_password(user[1])
    async with client:
        idx = await ns_index(client)
        await client.get_node(nid(SPEED, idx)).read_data_value(raise_on_bad_status=False)
    return time.perf_counter() - t0


# --- finding 5: bounded before a session exists ---------------------------------------------------


OVERSIZED = [
    (b"HEL", 0xFFFFFFFF),  # 4 GiB in the very first header
    (b"MSG", 0xFFFFFFFF),  # after Hello
    (b"OPN", 0xFFFFFFFF),
    (b"MSG", 65536),  # one byte over max_chunk_size
]


async def test_oversized_chunk_header_is_refused_before_its_body(opcua_config: Cfg, pki_seed: Path) -> None:
    async with running(opcua_config(), seed=pki_seed) as (_h, svc, url):
        for first, announced in OVERSIZED:
            before = rss()
            async with raw(url) as (reader, writer):
                if first != b"HEL":
                    writer.write(hello(url))
                    await writer.drain()
                    ack = await reader.read(28)
                    assert ack[:3] == b"ACK"
                channel = None if first == b"HEL" else 0
                writer.write(header(first, announced, channel=channel) + b"\0" * 1000)
                await writer.drain()
                got = await read_all(reader)  # the answer comes before any more of the body is read
                # then try to send "the body" anyway: nothing of it may be buffered
                with contextlib.suppress(ConnectionError):
                    for _ in range(64):
                        writer.write(b"\0" * MiB)
                        await writer.drain()
            grown = rss() - before
            print(f"\n{first.decode()} header announcing {announced} bytes, then 64 MiB: RSS +{grown / MiB:.1f} MiB")
            assert error_code(got) == "BadTcpMessageTooLarge", first
            assert grown < 48 * MiB  # the old server kept every byte (146 MB for 4 GiB announced)
        assert svc.peer_log.refusals >= len(OVERSIZED)
        assert await timed_read(url) > 0  # and it still serves


async def test_intermediate_chunks_without_a_final_one_are_bounded(opcua_config: Cfg, pki_seed: Path) -> None:
    cfg = opcua_config(limits={"max_message_size": 1 * MiB, "max_chunk_count": 64})
    async with running(cfg, seed=pki_seed) as (_h, _svc, url), open_channel(url) as client:
        proto: Any = client.uaclient.protocol
        conn = proto._connection  # the test builds chunks with the client's own channel state
        request = ua.ReadRequest()
        body = struct_to_binary(request) + b"\0" * 60_000
        before = rss()
        sent = 0
        for _ in range(400):  # 24 MB if nothing stopped it
            if proto.transport is None or proto.transport.is_closing():
                break
            chunk = bytearray(conn.message_to_binary(body, message_type=ua.MessageType.SecureMessage, request_id=9))
            chunk[3:4] = b"C"  # intermediate: "more chunks of this message follow"
            proto.transport.write(bytes(chunk))
            sent += len(chunk)
            await asyncio.sleep(0.002)  # a paced flood: the server (in this loop) reads between chunks
        await until(lambda: proto.transport is None or proto.transport.is_closing(), what="the server closing")
        grown = rss() - before
        print(f"\nintermediate chunks: {sent / MiB:.1f} MiB sent before the server closed; RSS +{grown / MiB:.1f} MiB")
        assert sent < 8 * MiB  # closed at about max_message_size (1 MiB), not after 24 MB
        assert grown < 48 * MiB


async def test_half_open_connections_do_not_lock_out_clients(opcua_config: Cfg, pki_seed: Path) -> None:
    cfg = opcua_config(limits={"max_connections": 60, "max_connections_per_address": 50, "max_pending_per_address": 8})
    async with running(cfg, seed=pki_seed) as (_h, svc, url):
        idle = await timed_read(url)
        writers = []
        for i in range(300):  # silent, Hello only, and Hello + half an OpenSecureChannel
            with contextlib.suppress(OSError):
                _r, w = await asyncio.open_connection(*host_port(url))
                if i % 3 >= 1:
                    w.write(hello(url))
                if i % 3 == 2:
                    w.write(header(b"OPN", 4000) + b"\0" * 100)
                writers.append(w)
        try:
            await asyncio.sleep(0)  # one loop turn: the server takes the connections in before the timed read
            took = await timed_read(url)  # a 10 s client timeout; asyncua's own lock-out lasted 30 s
            print(f"\nwith 300 half-open connections: connect+read {took * 1000:.0f} ms (idle {idle * 1000:.0f} ms), "
                  f"{svc.transport.evicted} evicted")
            assert svc.transport.evicted >= 300 - 8
            live = [c for c in svc.server.bserver.clients if not c.closed]
            assert len(live) <= 8 + 1
        finally:
            for w in writers:
                w.close()


async def test_connections_refused_when_every_slot_has_a_session(opcua_config: Cfg, pki_seed: Path) -> None:
    cfg = opcua_config(limits={"max_connections": 3, "max_connections_per_address": 3})
    async with running(cfg, seed=pki_seed) as (_h, svc, url), contextlib.AsyncExitStack() as stack:
        clients = []
        for _ in range(3):
            c = Client(url, timeout=10)
            await stack.enter_async_context(c)
            clients.append(c)
        async with raw(url) as (reader, _writer):
            assert await read_all(reader) == b""  # closed at once
        assert svc.transport.turned_away == 1
        for c in clients:  # the activated sessions were not evicted
            assert await ns_index(c) > 0


async def test_handshake_deadline_closes_silent_connections(opcua_config: Cfg, pki_seed: Path) -> None:
    async with running(opcua_config(limits={"handshake_timeout": 0.3}), seed=pki_seed) as (_h, _svc, url):
        async with raw(url) as (reader, writer):
            writer.write(hello(url))
            t0 = time.monotonic()
            got = await read_all(reader, timeout=10)
            print(f"\nsilent connection closed after {time.monotonic() - t0:.2f} s")
            assert got.startswith(b"ACK")
        took = await timed_read(url)  # a client that completes its handshake is not affected
        assert took > 0


async def test_subscriptions_limited_per_session_and_user(opcua_config: Cfg, pki_seed: Path) -> None:
    cfg = opcua_config(limits={"max_subscriptions_per_session": 3, "max_subscriptions_per_user": 5})
    params = ua.CreateSubscriptionParameters()
    params.RequestedPublishingInterval = 1000
    params.RequestedLifetimeCount = 300
    params.RequestedMaxKeepAliveCount = 10

    async def create(c: Client) -> str:
        try:
            await c.uaclient.create_subscription(params, lambda *_: None)
        except UaStatusCodeError as e:
            return status_name(e)
        return "Good"

    async with running(cfg, seed=pki_seed) as (_h, _svc, url):
        async with Client(url, timeout=10) as a, Client(url, timeout=10) as b:
            a.set_user(READER[0])
            got_a = [await create(a) for _ in range(4)]
            got_b = [await create(b) for _ in range(4)]
        # both anonymous sessions of one address share the per-user quota of 5
        assert got_a == ["Good"] * 3 + ["BadTooManySubscriptions"]
        assert got_b == ["Good", "Good", "BadTooManySubscriptions", "BadTooManySubscriptions"]
        reader = Client(url, timeout=10)
        reader.set_user(READER[0])
        reader.set_password(READER[1])
        async with reader:  # another user has a quota of its own
            assert await create(reader) == "Good"


async def test_monitored_items_limited_per_session(opcua_config: Cfg, pki_seed: Path) -> None:
    cfg = opcua_config(limits={"max_monitored_items_per_session": 5})
    async with running(cfg, seed=pki_seed) as (_h, _svc, url), Client(url, timeout=10) as c:
        idx = await ns_index(c)
        sub = await c.create_subscription(100, None)
        nodes = [c.get_node(nid(SPEED, idx)) for _ in range(8)]
        handles = await sub.subscribe_data_change(nodes, queuesize=1)
        codes = [h.name if isinstance(h, ua.StatusCode) else "Good" for h in handles]
        assert codes == ["Good"] * 5 + ["BadTooManyMonitoredItems"] * 3
        more = await sub.subscribe_data_change(nodes[:1], queuesize=1)
        assert isinstance(more[0], ua.StatusCode) and more[0].name == "BadTooManyMonitoredItems"


MALFORMED: list[tuple[str, Callable[[str], bytes]]] = [
    ("garbage", lambda url: b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("short size", lambda url: b"HELF\x03\x00\x00\x00"),
    ("truncated Hello", lambda url: header(b"HEL", 20, channel=None) + b"\x01" * 12),
    ("MSG before Hello", lambda url: header(b"MSG", 40) + b"\xff" * 28),
    ("OPN with a garbage body", lambda url: hello(url) + header(b"OPN", 60) + b"\xff" * 48),
]


async def test_malformed_input_logs_one_line_per_peer_without_traceback(
    opcua_config: Cfg, pki_seed: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with running(opcua_config(), seed=pki_seed) as (_h, svc, url):
        caplog.clear()
        caplog.set_level(logging.INFO)
        for _ in range(10):
            for _name, make in MALFORMED:
                async with raw(url) as (reader, writer):
                    writer.write(make(url))
                    with contextlib.suppress(ConnectionError):
                        await writer.drain()
                    await read_all(reader)
        # and a garbage request body on an open channel (asyncua's processor logged a traceback)
        for _ in range(10):
            async with open_channel(url) as client:
                proto: Any = client.uaclient.protocol
                body = nodeid_to_binary(nid(ObjectIds.ReadRequest_Encoding_DefaultBinary)) + b"\xff" * 30
                refused = svc.peer_log.refusals
                proto.transport.write(proto._connection.message_to_binary(body, request_id=3))
                await until(lambda refused=refused: svc.peer_log.refusals > refused, what="the request refused")  # type: ignore[misc]
        records = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert not [r for r in caplog.records if r.exc_info], "no traceback for malformed input"
        ours = [r for r in records if r.name == "canbridge.opcua" and "127.0.0.1" in r.getMessage()]
        assert 1 <= len(ours) <= 2, [r.getMessage() for r in ours]
        assert not [r for r in records if r.name.startswith("asyncua.server") and r.levelno >= logging.ERROR]
        assert svc.peer_log.refusals >= 50
        assert await timed_read(url) > 0


# --- finding 7: not a discovery server ------------------------------------------------------------


async def test_register_server_is_refused(opcua_config: Cfg, pki_seed: Path) -> None:
    async with running(opcua_config(), seed=pki_seed) as (_h, _svc, url):
        fake = ua.RegisteredServer()
        fake.ServerUri = "urn:evil:server"
        fake.ServerNames = [ua.LocalizedText("evil")]
        fake.DiscoveryUrls = ["opc.tcp://203.0.113.9:4840"]
        fake.ServerType = ua.ApplicationType.Server
        fake.IsOnline = True
        async with open_channel(url) as client:  # no session, None channel, no certificate
            with pytest.raises(UaStatusCodeError) as err:
                await client.uaclient.register_server(fake)
            assert status_name(err.value) == "BadServiceUnsupported"
            params = ua.RegisterServer2Parameters()
            params.Server = fake
            params.DiscoveryConfiguration = []
            with pytest.raises(UaStatusCodeError) as err:
                await client.uaclient.register_server2(params)
            assert status_name(err.value) == "BadServiceUnsupported"
            found = await client.uaclient.find_servers(ua.FindServersParameters())
        assert {s.ApplicationUri for s in found} <= {"urn:canbridge:opcua"}
        assert "urn:evil:server" not in {s.ApplicationUri for s in found}


async def test_rejected_certificates_are_capped(tmp_path: Path) -> None:
    from asyncua.common.utils import ServiceError
    from asyncua.crypto.cert_gen import generate_self_signed_app_certificate
    from canbridge_opcua.security import Pki, TrustListValidator
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import Encoding
    from cryptography.x509 import DNSName, UniformResourceIdentifier

    pki = Pki(tmp_path / "pki")
    pki.make_dirs()
    validator = TrustListValidator(pki, trust_all=False, max_rejected=3, max_size=4096)

    def cert(i: int, names: int = 0) -> Any:
        key = ec.generate_private_key(ec.SECP256R1())
        san: list[Any] = [UniformResourceIdentifier(f"urn:c{i}")]
        san += [DNSName(f"h{n}.example.org") for n in range(names)]
        # an EC key: fast to make; asyncua's helper is typed for RSA but signs with any key
        return generate_self_signed_app_certificate(cast(Any, key), f"urn:c{i}", {"commonName": f"c{i}"}, san, [],
                                                    days=5)

    def app(i: int) -> ua.ApplicationDescription:
        a = ua.ApplicationDescription()
        a.ApplicationUri = f"urn:c{i}"
        return a

    for i in range(6):
        with pytest.raises(ServiceError) as err:
            await validator(cert(i), app(i))
        assert err.value.code == StatusCodes.BadCertificateUntrusted
        await asyncio.sleep(0.01)  # distinct modification times
    kept = sorted(p.name for p in pki.rejected.iterdir())
    assert len(kept) == 3 and all(n.startswith(("urn_c3[", "urn_c4[", "urn_c5[")) for n in kept), kept
    big = cert(9, names=400)  # about 9 KiB: over max_size
    assert len(big.public_bytes(Encoding.DER)) > 4096
    with pytest.raises(ServiceError):
        await validator(big, app(9))
    assert not any(n.startswith("urn_c9[") for n in (p.name for p in pki.rejected.iterdir()))
    assert validator.rejected_count == 7


# --- finding 6: logins ----------------------------------------------------------------------------


def plaintext_client(url: str, user: tuple[str, str]) -> Client:
    """An asyncua client that sends its password in clear text (as a careless client would)."""
    client = Client(url, timeout=10)
    client.set_user(user[0])
    client.set_password(user[1])
    original = client.server_policy

    def no_encryption(token_type: ua.UserTokenType) -> ua.UserTokenPolicy:
        policy = original(token_type)
        policy.SecurityPolicyUri = None
        return policy

    client.server_policy = no_encryption  # type: ignore[method-assign]
    return client


async def test_cleartext_password_on_unencrypted_channel_is_refused(opcua_config: Cfg, pki_seed: Path) -> None:
    async with running(opcua_config(), seed=pki_seed) as (_h, svc, url):
        with pytest.raises(UaStatusCodeError) as err:
            async with plaintext_client(url, OPERATOR):
                pass
        assert status_name(err.value) == "BadSecurityModeInsufficient"
        async with connect_encrypted_token(url):  # the same login with the token encrypted is fine
            pass
        assert svc.users.failed_logins == 0  # refused before any password check
    cfg = opcua_config(allow_cleartext_passwords=True)
    async with running(cfg, seed=pki_seed) as (_h, _svc, url), plaintext_client(url, OPERATOR) as c:
        assert await ns_index(c) > 0


@contextlib.asynccontextmanager
async def connect_encrypted_token(url: str, user: tuple[str, str] = OPERATOR) -> AsyncIterator[Client]:
    client = Client(url, timeout=10)
    client.set_user(user[0])
    client.set_password(user[1])
    async with client:
        yield client


class HashCalls:
    """Counts PBKDF2 calls and where they ran."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        self.on_loop = 0
        self.running = 0
        self.max_running = 0
        self.loop_thread = threading.get_ident()
        self._lock = threading.Lock()
        real = opcua_config_module._pbkdf2

        def counted(password: str, salt: bytes, iterations: int) -> bytes:
            with self._lock:
                self.calls += 1
                self.on_loop += threading.get_ident() == self.loop_thread
                self.running += 1
                self.max_running = max(self.max_running, self.running)
            try:
                return real(password, salt, iterations)
            finally:
                with self._lock:
                    self.running -= 1

        monkeypatch.setattr(opcua_config_module, "_pbkdf2", counted)


async def failed_login(url: str, user: tuple[str, str]) -> str:
    try:
        async with connect_encrypted_token(url, user):
            return "Good"
    except UaStatusCodeError as e:
        return status_name(e)


async def test_unknown_and_known_users_cost_one_hash_each(
    opcua_config: Cfg, pki_seed: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running(opcua_config(limits={"login_backoff_base": 0}), seed=pki_seed) as (_h, _svc, url):
        hashes = HashCalls(monkeypatch)
        timings: dict[str, list[float]] = {"known": [], "unknown": []}
        for _ in range(3):
            for kind, user in (("known", (OPERATOR[0], "wrong")), ("unknown", ("nobody", "wrong"))):
                before = hashes.calls
                t0 = time.perf_counter()
                assert await failed_login(url, user) == "BadUserAccessDenied"
                timings[kind].append(time.perf_counter() - t0)
                assert hashes.calls - before == 1, kind  # the same work for a name that does not exist
        assert hashes.on_loop == 0  # never on the event loop
        print("\nfailed login, median: " + ", ".join(f"{k} user {statistics.median(v) * 1000:.1f} ms"
                                                     for k, v in timings.items()))


async def test_failed_logins_back_off_then_refuse_without_hashing(
    opcua_config: Cfg, pki_seed: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = opcua_config(limits={"login_failures_per_window": 3, "login_backoff_base": 0.01, "login_backoff_max": 0.03})
    async with running(cfg, seed=pki_seed) as (_h, svc, url):
        hashes = HashCalls(monkeypatch)
        for _ in range(5):
            assert await failed_login(url, (OPERATOR[0], "guess")) == "BadUserAccessDenied"
        assert hashes.calls == 3  # the last two were refused without a check
        assert svc.users.backoff_delays == [0.01, 0.02, 0.03]  # doubling, capped at login_backoff_max
        assert svc.users.quick_refusals == 2
        # within the window even the right password is refused from that address (no oracle)
        assert await failed_login(url, OPERATOR) == "BadUserAccessDenied"
        assert hashes.calls == 3
        for fails in svc.users._failures.values():  # the window passes
            fails.times.clear()
        async with connect_encrypted_token(url):
            pass


async def test_login_flood_does_not_stall_other_clients(
    opcua_config: Cfg, pki_seed: Path, users: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """4 tasks of wrong passwords against a 600,000-iteration hash, while another client reads."""
    flooded = {**users, "victim": {"password_hash": hash_password("the-real-one"), "role": "read"}}
    cfg = opcua_config(users=flooded, limits={"login_failures_per_window": 100_000, "login_backoff_base": 0})
    async with running(cfg, seed=pki_seed) as (_h, _svc, url):
        hashes = HashCalls(monkeypatch)
        async with Client(url, timeout=10) as reader:
            node = reader.get_node(nid(SPEED, await ns_index(reader)))

            async def latencies(seconds: float) -> list[float]:
                out = []
                end = time.monotonic() + seconds
                while time.monotonic() < end:
                    t0 = time.perf_counter()
                    await node.read_data_value(raise_on_bad_status=False)
                    out.append(time.perf_counter() - t0)
                    await asyncio.sleep(0.01)  # the sampling period of the latency probe
                return out

            idle = await latencies(1.0)
            stop = asyncio.Event()

            async def flood() -> int:
                n = 0
                while not stop.is_set():
                    assert await failed_login(url, ("victim", f"guess{n}")) == "BadUserAccessDenied"
                    n += 1
                return n

            tasks = [asyncio.create_task(flood()) for _ in range(4)]
            busy = await latencies(3.0)
            stop.set()
            attempts = sum(await asyncio.gather(*tasks))
        p50_idle, p50_busy = statistics.median(idle), statistics.median(busy)
        print(f"\nlogin flood ({attempts} attempts in 3 s): other client's read p50 idle {p50_idle * 1000:.1f} ms, "
              f"during flood {p50_busy * 1000:.1f} ms, max {max(busy) * 1000:.1f} ms; "
              f"{hashes.calls} hashes, at most {hashes.max_running} at once")
        assert busy, "the other client was answered during the flood"
        assert hashes.calls >= 1 and hashes.on_loop == 0
        assert hashes.max_running <= 2  # login_concurrency


# --- finding 8: asyncua internals fail closed -----------------------------------------------------


async def test_missing_asyncua_internal_stops_the_plugin(
    opcua_config: Cfg, pki_seed: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from asyncua.server.uaprocessor import UaProcessor
    from canbridge_opcua import asyncua_compat

    from canbridge import PluginError

    assert asyncua_compat.problems() == []
    monkeypatch.delattr(UaProcessor, "open_secure_channel")
    assert asyncua_compat.problems() == ["UaProcessor.open_secure_channel(algohdr, seqhdr, body)"]
    with pytest.raises(PluginError, match=r"lacks internals .*UaProcessor\.open_secure_channel"):
        async with running(opcua_config(), seed=pki_seed):
            pass


@pytest.mark.parametrize("how", ["mode not recorded", "mode lookup raises"])
async def test_unknown_channel_security_still_checks_the_certificate(
    opcua_config: Cfg, pki_seed: Path, pki_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """A renamed internal once made the check 'is this channel secured?' answer no, so a secure
    channel's client certificate was never checked against the trust list."""
    from canbridge_opcua.asyncua_compat import GuardedProcessor

    from tests.plugins.opcua.test_opcua_security import secure_client

    if how == "mode not recorded":
        base: Any = GuardedProcessor.__mro__[1]  # asyncua's UaProcessor: the mode is never recorded
        monkeypatch.setattr(GuardedProcessor, "open_secure_channel", base.open_secure_channel)
    else:
        def broken(self: Any) -> bool:
            raise AttributeError("_connection")

        monkeypatch.setattr(GuardedProcessor, "secured", property(broken))
    stranger = make_client_cert(tmp_path / "stranger", "stranger")
    async with running(opcua_config(), seed=pki_seed) as (_h, _svc, url):
        client = await secure_client(url, stranger, OPERATOR)
        with pytest.raises(UaStatusCodeError) as err:
            async with client:
                pass
        assert status_name(err.value) == "BadCertificateUntrusted"
        assert len(list((pki_dir / "rejected").iterdir())) == 1
