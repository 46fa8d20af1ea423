"""Nodes for signals the bridge adds while it runs (J1939 senders heard but not configured).

They follow the tree and node ids of :mod:`canbridge_opcua.nodes` exactly: the message object
``<bus>.<message>`` under the bus folder (for a heard source the message is ``sa0x21.EEC1``), its signals
``<bus>.<message>.<signal>``, and the per-message reception variables under
``<bus>._Diagnostics.Messages``. A client that browses after the first frame of such a source sees them
and can subscribe; their node ids are as stable as the signal names.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence

from asyncua import ua
from asyncua.ua.object_ids import ObjectIds

from canbridge import MessageInfo, Quality, SignalInfo
from canbridge_opcua.nodes import (
    _NULL,
    DIAG_MSG_VARS,
    DIAG_NAME,
    QUALITY_STATUS,
    Plan,
    _object,
    _signal_items,
    _variable,
    nodeid,
)


def added_items(
    plan: Plan,
    idx: int,
    messages: Mapping[str, MessageInfo],
    signals: Sequence[SignalInfo],
    existing: Callable[[ua.NodeId], bool],
    sampling_ms: float,
) -> Iterator[ua.AddNodesItem]:
    """The AddNodesItems of ``signals`` (parents first) with the objects of their messages that do not
    exist yet, filling ``plan`` as :func:`canbridge_opcua.nodes.generate` does. The bus folders exist:
    buses are configured, never added."""

    def nid(s: str) -> ua.NodeId:
        return nodeid(s, idx)

    waiting = QUALITY_STATUS[Quality.WAITING]
    made: set[str] = set()
    for info in signals:
        mkey = f"{info.bus}.{info.message}"
        mid = nid(mkey)
        if mkey not in made and not existing(mid):
            made.add(mkey)
            minfo = messages.get(mkey)
            desc = (minfo.comment if minfo and minfo.comment else None) or f"CAN frame 0x{info.frame_id:X}"
            yield _object(mid, info.message, idx, nid(info.bus), False, ObjectIds.Organizes, desc)
            msgs_id = nid(f"{info.bus}.{DIAG_NAME}.Messages")
            did = nid(f"{info.bus}.{DIAG_NAME}.Messages.{info.message}")
            yield _object(did, info.message, idx, msgs_id, False, ObjectIds.Organizes, desc)
            for name, vt, text in DIAG_MSG_VARS:
                vid = nid(f"{info.bus}.{DIAG_NAME}.Messages.{info.message}.{name}")
                plan.mutable.add(vid)
                yield _variable(vid, name, idx, did, _NULL, nodeid(vt.value), ObjectIds.BaseDataVariableType,
                                description=text)
                plan.diag[(mkey, name)] = (vid, vt)
        yield from _signal_items(plan, info, idx, mid, waiting, sampling_ms)
