"""Configuration of the MQTT plugin (``plugins: {mqtt: {...}}``): broker connection, Sparkplug B edge node,
plain JSON topics, report by exception and the store-and-forward buffer."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator

from canbridge import Strict

# Sparkplug ids and topic levels must not carry MQTT's separators and wildcards.
_TOPIC_LEVEL = re.compile(r"^[^/+#\x00]+$")
_DEADBAND = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(%?)\s*$")


def check_topic_level(value: str, what: str) -> str:
    """``value`` as one MQTT topic level, or a ValueError naming ``what``."""
    if not _TOPIC_LEVEL.match(value):
        raise ValueError(f"{what} {value!r} must be non-empty and contain none of '/', '+', '#'")
    return value


class Broker(Strict):
    """Where to connect: URLs tried in order (failover), credentials, TLS, protocol version."""

    urls: list[str] = Field(
        default_factory=lambda: ["mqtt://127.0.0.1:1883"],
        min_length=1,
        description="mqtt://host[:port] or mqtts://host[:port], tried in order after each failed connect",
    )
    protocol: Literal["3.1.1", "5"] = Field("3.1.1", description="MQTT protocol version")
    username: str | None = Field(None, description="user name for the broker")
    password: SecretStr | None = Field(None, description="password (prefer password_file)")
    password_file: Path | None = Field(None, description="file whose first line is the password")
    ca_file: Path | None = Field(None, description="CA bundle that signs the broker's certificate (mqtts://)")
    cert_file: Path | None = Field(None, description="client certificate (PEM) for mutual TLS")
    key_file: Path | None = Field(None, description="client certificate's private key (PEM)")
    tls_insecure: bool = Field(False, description="accept a broker certificate whose host name does not match")
    keepalive_s: int = Field(30, ge=5, le=65535, description="MQTT keep-alive; a dead link shows after 1.5x")
    connect_timeout_s: float = Field(10.0, gt=0, le=300)
    reconnect_min_s: float = Field(1.0, gt=0, description="first reconnect delay; doubles up to reconnect_max_s")
    reconnect_max_s: float = Field(60.0, gt=0, description="longest reconnect delay (plus up to 25 % jitter)")
    max_inflight: int = Field(100, ge=1, le=65535, description="QoS 1 messages awaiting their PUBACK")
    max_incoming: int = Field(1000, ge=1, description="received messages queued before the oldest is dropped")

    @field_validator("urls")
    @classmethod
    def _urls(cls, urls: list[str]) -> list[str]:
        for url in urls:
            parts = urlsplit(url)
            if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
                raise ValueError(f"broker URL {url!r}: expected mqtt://host[:port] or mqtts://host[:port]")
            if parts.path not in ("", "/") or parts.query or parts.username:
                raise ValueError(f"broker URL {url!r}: no path, query or credentials (use username/password)")
            try:
                parts.port  # noqa: B018  (raises for a port out of range)
            except ValueError as e:
                raise ValueError(f"broker URL {url!r}: {e}") from e
        return urls

    @model_validator(mode="after")
    def _credentials(self) -> Broker:
        if self.password is not None and self.password_file is not None:
            raise ValueError("give password or password_file, not both")
        if (self.password is not None or self.password_file is not None) and self.username is None:
            raise ValueError("a password needs a username")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s must not be less than reconnect_min_s")
        return self


class SparkplugConfig(Strict):
    """The Sparkplug B 3.0 edge node: one per bridge, one device per CAN bus."""

    group_id: str = Field(description="Sparkplug group id")
    edge_node_id: str = Field(description="Sparkplug edge node id (unique in the group)")
    primary_host_id: str | None = Field(
        None, description="wait for this host's STATE online before birth; buffer while it is offline"
    )
    choices_as_text: bool = Field(
        False, description="signals with choices as String metrics (their choice text) instead of integers"
    )
    data_qos: Literal[0, 1] = Field(0, description="QoS of DDATA; 1 for at-least-once delivery to the broker")
    writes: bool = Field(False, description="accept DCMD writes (through the write path); false refuses them")
    max_command_metrics: int = Field(100, ge=1, le=10000, description="metrics in one NCMD/DCMD at most")

    @field_validator("group_id", "edge_node_id", "primary_host_id")
    @classmethod
    def _ids(cls, v: str | None) -> str | None:
        return None if v is None else check_topic_level(v, "Sparkplug id")


class JsonConfig(Strict):
    """Plain topics ``<prefix>/<bus>/<message>/<signal>`` with JSON payloads."""

    prefix: str = Field("canbridge", description="first topic level(s) of every topic")
    retain: bool = Field(False, description="publish values retained")
    qos: Literal[0, 1] = Field(0, description="QoS of value messages")
    writes: bool = Field(False, description="accept writes on <topic>/set (through the write path)")
    frames: bool = Field(False, description="raw received frames on <prefix>/<bus>/frames (node-red shape)")
    frames_queue: int = Field(10000, ge=1, description="frames held for a slow broker before the oldest drop")
    dm1: bool = Field(True, description="J1939 DM1 of each source heard, retained, on <prefix>/<bus>/dm1/0x<SA>")
    dm1_interval_s: float = Field(0.5, gt=0, le=60, description="how often the DM1 topics are brought up to date")
    dm1_stale_after_s: float = Field(3.0, gt=0, description="a source with no DM1 for this long is published stale")
    max_topics: int = Field(100_000, ge=1, description="refuse to start when more signals would be published")
    client_id: str | None = Field(None, description="MQTT client id (default canbridge-<prefix>)")

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        for level in v.split("/"):
            check_topic_level(level, "prefix level")
        return v


class ReportConfig(Strict):
    """Report by exception: what changed since the last report, batched, with deadbands and a maximum age."""

    interval_ms: int = Field(100, ge=10, le=60_000, description="batch interval: one DDATA per bus at most")
    deadband: dict[str, str | float] = Field(
        default_factory=dict,
        description="signal name glob -> absolute deadband (0.5) or percent of the signal's range ('2%'); "
        "the last matching glob wins",
    )
    max_age_s: float | None = Field(
        None, gt=0, description="re-send an unchanged value after this many seconds (None: never)"
    )

    @field_validator("deadband")
    @classmethod
    def _deadbands(cls, v: dict[str, str | float]) -> dict[str, str | float]:
        for glob, band in v.items():
            if isinstance(band, bool):
                raise ValueError(f"deadband {glob!r}: expected a number or 'N%', got {band!r}")
            if isinstance(band, int | float):
                if band < 0:
                    raise ValueError(f"deadband {glob!r}: must not be negative")
            elif not _DEADBAND.match(band):
                raise ValueError(f"deadband {glob!r}: expected a number or 'N%', got {band!r}")
        return v


class BufferConfig(Strict):
    """Store-and-forward: changes kept on disk while the broker (or the primary host) is away."""

    enabled: bool = True
    max_mb: float = Field(256.0, gt=0, description="size of the queue file; the oldest changes drop first")
    max_age_h: float = Field(72.0, gt=0, description="changes older than this are dropped")
    drain_rate: int = Field(
        250_000, ge=1, description="backlog changes sent per second after reconnect (live data waits for it)"
    )
    batch: int = Field(1000, ge=1, le=100_000, description="backlog changes per message")
    max_pending: int = Field(
        200_000, ge=1, description="changes waiting for a slow disk before new ones are refused (counted)"
    )
    path: Path | None = Field(None, description="queue file (default <state_dir>/mqtt/buffer.sqlite)")


class MqttConfig(Strict):
    """MQTT northbound: a Sparkplug B edge node and/or plain JSON topics, with store-and-forward."""

    broker: Broker = Field(default_factory=Broker)
    sparkplug: SparkplugConfig | None = Field(None, description="Sparkplug B edge node; leave out to disable")
    json_topics: JsonConfig | None = Field(
        None, alias="json", description="plain JSON topics; leave out to disable"
    )
    report: ReportConfig = Field(default_factory=ReportConfig)
    buffer: BufferConfig = Field(default_factory=BufferConfig)
    include: list[str] = Field(default_factory=lambda: ["*"], description="signal name globs to publish")
    exclude: list[str] = Field(default_factory=list, description="signal name globs not to publish")
    max_command_bytes: int = Field(
        65536, ge=64, le=16 * 1024 * 1024, description="incoming NCMD/DCMD/set payloads larger than this are refused"
    )

    @model_validator(mode="after")
    def _a_mode(self) -> MqttConfig:
        if self.sparkplug is None and self.json_topics is None:
            raise ValueError("enable sparkplug, json or both")
        return self
