"""Configuration of the Modbus plugin (``plugins: {modbus: {...}}``)."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from canbridge import Strict

Encoding = Literal["bool", "int16", "uint16", "int32", "uint32", "float32", "float64"]
WordOrder = Literal["ABCD", "CDAB", "BADC", "DCBA"]

ENCODINGS: tuple[str, ...] = ("bool", "int16", "uint16", "int32", "uint32", "float32", "float64")
WORD_ORDERS: tuple[str, ...] = ("ABCD", "CDAB", "BADC", "DCBA")


class SignalOptions(Strict):
    """Encoding of the signals whose names match a pattern; used when a signal is first mapped."""

    encoding: Encoding | Literal["auto"] | None = Field(None, description="register encoding")
    word_order: WordOrder | None = Field(None, description="ABCD, CDAB, BADC or DCBA")
    scale: float | None = Field(None, description="register value = physical value x scale")

    @field_validator("scale")
    @classmethod
    def _nonzero(cls, v: float | None) -> float | None:
        if v is not None and v == 0:
            raise ValueError("scale must not be 0")
        return v


class DtcConfig(Strict):
    """J1939 diagnostics (DM1) in registers: one fixed block per source address of each listed bus."""

    buses: list[str] = Field(default_factory=list, description="J1939 buses whose DM1 of every source is served")
    count: int = Field(8, ge=1, le=32, description="trouble codes per source in registers (the first N of its DM1)")
    base: int = Field(40000, ge=0, le=65535, description="first register of the first bus's block")
    stale_after_s: float = Field(
        3.0, gt=0, description="a source with no DM1 for this long reads as stale (DM1 comes once a second)"
    )


class RtuConfig(Strict):
    """Modbus RTU on a serial line, serving the same register map as TCP."""

    port: str = Field(min_length=1, description="serial device, e.g. /dev/ttyUSB0")
    baudrate: int = Field(19200, gt=0)
    parity: Literal["N", "E", "O"] = Field("E", description="the Modbus default is even parity")
    stopbits: Literal[1, 2] = 1


class ModbusConfig(Strict):
    """Modbus TCP (and optionally RTU) server of the mapping table."""

    host: str = Field("127.0.0.1", description="TCP listen address")
    port: int = Field(5020, ge=0, le=65535, description="TCP port; 0 picks a free one")
    tcp: bool = Field(True, description="false: serve only on the serial line (rtu)")
    rtu: RtuConfig | None = Field(None, description="also serve Modbus RTU on a serial line")

    unit_id: int = Field(1, ge=1, le=247, description="unit id of every bus not in unit_ids")
    unit_ids: dict[str, int] = Field(default_factory=dict, description="unit id per bus name")
    holding_only: bool = Field(
        False, description="put everything in holding registers (for PLCs that only read FC 3)"
    )

    include: list[str] = Field(default_factory=lambda: ["*"], description="signal name globs to serve")
    exclude: list[str] = Field(default_factory=list, description="signal name globs not to serve")
    encoding: Encoding | Literal["auto"] = Field("auto", description="default encoding of new signals")
    word_order: WordOrder = Field("ABCD", description="default word and byte order of new signals")
    scale: float = Field(1.0, description="default scale of new signals (register = value x scale)")
    signals: dict[str, SignalOptions] = Field(
        default_factory=dict, description="per signal (glob) encoding; later patterns win"
    )
    map_file: Path | None = Field(
        None, description="register map file; default <config>.modbus-map.yaml next to the configuration"
    )
    quality_base: int = Field(20000, ge=0, le=65535, description="first quality register")
    diagnostics_base: int = Field(30000, ge=0, le=65535, description="first bus diagnostics register")
    dtc: DtcConfig = Field(default_factory=DtcConfig, description="J1939 DM1 trouble codes per source (docs/modbus.md)")

    bad_quality: Literal["exception", "last_value"] = Field(
        "exception",
        description="reading a stale, bad or waiting signal: exception 0B, or its last value "
        "(check the quality registers)",
    )
    allow: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = Field(
        default_factory=lambda: [ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128")],
        description="client addresses and networks allowed to connect",
    )
    read_only: bool = Field(False, description="refuse every write (exception 01)")
    max_connections: int = Field(
        16, ge=1, le=1024, description="simultaneous TCP clients in total (when full, the longest idle makes room)"
    )
    max_connections_per_address: int = Field(
        4, ge=1, le=1024, description="simultaneous TCP clients from one address (its longest idle makes room)"
    )
    evict_idle_s: float = Field(
        30.0,
        ge=0,
        description="when a connection limit is reached, a client with no request for this long (or none "
        "yet) may be closed to admit a new one; busier clients are never evicted",
    )
    idle_timeout_s: float | None = Field(300.0, gt=0, description="close a TCP client silent this long")
    frame_timeout_s: float = Field(5.0, gt=0, description="close a TCP client that leaves a frame half sent")
    output_buffer_bytes: int = Field(
        65536,
        ge=1024,
        le=16 * 1024 * 1024,
        description="unsent responses held per TCP client; above it its requests are not read",
    )
    output_timeout_s: float = Field(
        10.0, gt=0, description="close a TCP client that has not taken its responses for this long"
    )
    # 5 ms: the bridge's share of a value's latency stays small beside the poll period (bench/bench_e2e.py)
    update_interval: float = Field(0.005, gt=0, le=10, description="register update batch interval (s)")
    diagnostics_interval: float = Field(1.0, gt=0, le=60, description="bus diagnostics refresh (s)")
    write_timeout_s: float = Field(2.0, gt=0, le=60, description="a write not done by then: exception 0B")

    def listen_endpoints(self) -> list[tuple[str, str, int]]:
        """``(key, host, port)`` it listens on (``canbridge check`` tests that the port is free)."""
        return [("port", self.host, self.port)] if self.tcp else []

    @field_validator("scale")
    @classmethod
    def _nonzero(cls, v: float) -> float:
        if v == 0:
            raise ValueError("scale must not be 0")
        return v

    @field_validator("unit_ids")
    @classmethod
    def _unit_range(cls, v: dict[str, int]) -> dict[str, int]:
        for bus, uid in v.items():
            if not 1 <= uid <= 247:
                raise ValueError(f"unit id of bus {bus!r} must be 1 to 247, got {uid}")
        return v

    @model_validator(mode="after")
    def _regions(self) -> ModbusConfig:
        if not self.tcp and self.rtu is None:
            raise ValueError("tcp is false and no rtu is configured: nothing to serve")
        if self.quality_base == self.diagnostics_base:
            raise ValueError("quality_base and diagnostics_base must differ")
        if self.dtc.buses and self.dtc.base in (self.quality_base, self.diagnostics_base):
            raise ValueError("dtc.base must differ from quality_base and diagnostics_base")
        return self
