"""The broker connection: a fresh aiomqtt client (and so a fresh Will) per connect, broker URLs tried in
order, reconnect with exponential backoff and jitter. The plugin owns reconnecting: Sparkplug needs a new
``bdSeq`` in the Will of every connection, which a library's own auto-reconnect would reuse."""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import aiomqtt

from canbridge_mqtt.config import Broker

log = logging.getLogger("canbridge.mqtt")


class DropOldestQueue(asyncio.Queue[aiomqtt.Message]):
    """The incoming message queue: bounded, a flood drops the oldest message instead of growing memory."""

    maxlen = 1000
    dropped = 0

    def put_nowait(self, item: aiomqtt.Message) -> None:
        while self.qsize() >= self.maxlen:
            self.get_nowait()
            type(self).dropped += 1
        super().put_nowait(item)


def message_origin(topic: str, properties: Any, client_id: str) -> str:
    """What can be known of who sent a received message, for the audit log. MQTT 3.1.1 carries no
    publisher identity: the broker forwards the message without saying whose it was, so the most there is
    to name is our client (``client_id``) and the topic; MQTT 5 adds the sender's user properties and
    correlation data, named when present. Bounded, one line."""
    parts = [f"client {client_id}", f"topic {topic}"]
    for key, value in getattr(properties, "UserProperty", None) or []:
        parts.append(f"user-property {key}={value}")
    corr = getattr(properties, "CorrelationData", None)
    if isinstance(corr, bytes | bytearray) and corr:
        parts.append(f"correlation {bytes(corr[:32]).hex()}")
    text = "; ".join(parts).replace("\n", " ").replace("\r", " ")
    return text if len(text) <= 300 else text[:297] + "..."


def _queue_type(maxlen: int) -> type[DropOldestQueue]:
    return type("BoundedQueue", (DropOldestQueue,), {"maxlen": maxlen, "dropped": 0})


class Link:
    """One MQTT connection kept up for one output (Sparkplug or JSON)."""

    def __init__(self, cfg: Broker, client_id: str, what: str) -> None:
        self.cfg = cfg
        self.client_id = client_id
        self.what = what
        self.url: str | None = None  # the broker connected to, None while disconnected
        self.connects = 0
        self.failures = 0
        self.last_error: str | None = None
        self._queue = _queue_type(cfg.max_incoming)

    @property
    def incoming_dropped(self) -> int:
        return self._queue.dropped

    def _password(self) -> str | None:
        if self.cfg.password is not None:
            return self.cfg.password.get_secret_value()
        if self.cfg.password_file is not None:
            lines = self.cfg.password_file.read_text(encoding="utf-8").splitlines()
            return lines[0] if lines else ""
        return None

    def client(self, url: str, will: aiomqtt.Will | None) -> aiomqtt.Client:
        parts = urlsplit(url)
        tls = parts.scheme == "mqtts"
        kwargs: dict[str, Any] = {}
        if tls:
            kwargs["tls_params"] = aiomqtt.TLSParameters(
                ca_certs=None if self.cfg.ca_file is None else str(self.cfg.ca_file),
                certfile=None if self.cfg.cert_file is None else str(self.cfg.cert_file),
                keyfile=None if self.cfg.key_file is None else str(self.cfg.key_file),
                cert_reqs=ssl.CERT_REQUIRED,
            )
            kwargs["tls_insecure"] = self.cfg.tls_insecure
        client = aiomqtt.Client(
            parts.hostname or "127.0.0.1",
            parts.port or (8883 if tls else 1883),
            username=self.cfg.username,
            password=self._password(),
            identifier=self.client_id,
            protocol=aiomqtt.ProtocolVersion.V5 if self.cfg.protocol == "5" else aiomqtt.ProtocolVersion.V311,
            will=will,
            clean_session=None if self.cfg.protocol == "5" else True,
            timeout=self.cfg.connect_timeout_s,
            keepalive=self.cfg.keepalive_s,
            max_inflight_messages=self.cfg.max_inflight,
            max_queued_outgoing_messages=self.cfg.max_inflight * 100,
            queue_type=self._queue,
            **kwargs,
        )
        client.pending_calls_threshold = self.cfg.max_inflight  # up to it is the design, not a warning
        return client

    async def run(self, will: Callable[[], aiomqtt.Will | None],
                  session: Callable[[aiomqtt.Client], Awaitable[None]]) -> None:
        """Connect, run ``session`` while connected, reconnect after it ends or fails; until cancelled.
        ``will`` is called before every connect (a new bdSeq each time)."""
        delay = self.cfg.reconnect_min_s
        index = 0
        warned = False
        while True:
            url = self.cfg.urls[index % len(self.cfg.urls)]
            started = time.monotonic()
            try:
                async with self.client(url, will()) as client:
                    self.url = url
                    self.connects += 1
                    warned = False
                    log.info("mqtt: %s connected to %s", self.what, url)
                    await session(client)
                delay = self.cfg.reconnect_min_s  # the session ended on purpose: reconnect soon
            except (aiomqtt.MqttError, OSError, ssl.SSLError) as e:
                self.failures += 1
                self.last_error = f"{url}: {e}"
                index += 1  # failover: the next URL on the next try
                if time.monotonic() - started > 10 * self.cfg.reconnect_min_s:
                    delay = self.cfg.reconnect_min_s  # a connection that lived a while starts backoff anew
                # one warning per outage; the retries after it are debug (a demo without a broker stays quiet)
                (log.debug if warned else log.warning)(
                    "mqtt: %s: broker %s unreachable or lost (%s); retrying in the background", self.what, url, e)
                warned = True
            finally:
                self.url = None
            await asyncio.sleep(delay * (1 + 0.25 * random.random()))
            delay = min(delay * 2, self.cfg.reconnect_max_s)
