"""Adding the generated address space in bulk, with the immutable attribute values shared.

asyncua's ``add_nodes`` builds 24 attribute objects (an AttributeValue, a DataValue, a Variant) per node
and scans the parent's whole reference list before adding a child: 10,000 signals (about 29,000 nodes)
took 9 s and 26 MB per 1,000 signals. Most of those attributes are the same for every node of a kind
(DataType, ValueRank, AccessLevel, WriteMask, ...) and never change: the server refuses writes of
attributes other than Value from every session canbridge opens (none is an asyncua admin), and the
service writes only the Value of signal and diagnostics variables.

So each *shape* of node (node class, type definition, reference type and every attribute but the
names and the value) is added once through asyncua's own ``add_nodes`` as a prototype. Every other
node of that shape gets a NodeData of its own whose attribute dict shares the prototype's attribute
objects, except for what differs per node: NodeId, BrowseName, DisplayName, Description and Value.
Values that are written (``mutable``) get their own object; immutable property values (EURange,
EngineeringUnits, EnumStrings, ...) are shared between nodes with equal values. References are built
as asyncua builds them; the inverse reference to a parent and the type definition reference are the
same object for every sibling. ``tests/plugins/opcua/test_opcua_bulk.py`` proves that every attribute
and every reference of every node equals what ``add_nodes`` makes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Container, Iterable
from typing import Any

from asyncua import ua
from asyncua.server.address_space import AddressSpace, AttributeValue, NodeData, NodeManagementService
from asyncua.ua.attribute_ids import AttributeIds

from canbridge import CanbridgeError

_PER_NODE = frozenset({"DisplayName", "Description", "Value"})


_SCALARS = frozenset({str, int, float, bool, bytes, type(None)})
_FIELDS: dict[type, tuple[str, ...]] = {}


def _frozen(v: Any) -> Any:
    """A hashable stand-in for an attribute value (asyncua's structures are unhashable dataclasses)."""
    t = type(v)
    if t in _SCALARS or isinstance(v, int):  # IntEnum masks too; the type keeps True apart from 1
        return (t, v)
    if t is ua.NodeId:
        return (t, v.Identifier, v.NamespaceIndex, v.NodeIdType)
    if isinstance(v, list | tuple):
        return tuple(_frozen(x) for x in v)
    return repr(v)


def _shape(item: ua.AddNodesItem) -> tuple[Any, ...]:
    attrs = item.NodeAttributes
    names = _FIELDS.get(type(attrs))
    if names is None:
        names = _FIELDS[type(attrs)] = tuple(f.name for f in dataclasses.fields(attrs) if f.name not in _PER_NODE)
    return (
        type(attrs), int(item.NodeClass), _frozen(item.TypeDefinition), _frozen(item.ReferenceTypeId),
        *(_frozen(getattr(attrs, n)) for n in names),
    )


class BulkAdder:
    """Adds AddNodesItems to one address space; ``mutable`` are the node ids whose Value is written."""

    def __init__(self, aspace: AddressSpace, mutable: Container[ua.NodeId]) -> None:
        self.aspace = aspace
        self.nms = NodeManagementService(aspace)
        self.mutable = mutable  # may grow while items are added: asked when each item is
        self._protos: dict[tuple[Any, ...], NodeData] = {}
        self._names: dict[tuple[str, Any], AttributeValue] = {}  # (attribute, text) -> shared value
        self._values: dict[tuple[Any, ...], AttributeValue] = {}
        self._inverse: dict[tuple[ua.NodeId, ua.NodeId], ua.ReferenceDescription] = {}
        self._typedefs: dict[ua.NodeId, ua.ReferenceDescription] = {}

    def add(self, items: Iterable[ua.AddNodesItem]) -> None:
        """Add every item (parents before children); CanbridgeError naming the first that cannot be."""
        aspace = self.aspace
        for item in items:
            shape = _shape(item)
            proto = self._protos.get(shape)
            if proto is None:
                self._add_prototype(item, shape)
                continue
            nid = item.RequestedNewNodeId
            parent = aspace.get(item.ParentNodeId)
            if nid in aspace or parent is None:
                raise CanbridgeError(
                    f"opcua: cannot add node {nid}: "
                    + ("it exists already" if parent is not None else f"parent {item.ParentNodeId} is missing")
                )
            aspace[nid] = self._clone(proto, item, parent)

    # --- internals --------------------------------------------------------------------------------

    def _add_prototype(self, item: ua.AddNodesItem, shape: tuple[Any, ...]) -> None:
        result = self.nms.add_nodes([item])[0]
        if not result.StatusCode.is_good():
            raise CanbridgeError(f"opcua: cannot add node {item.RequestedNewNodeId}: {result.StatusCode.name}")
        self._protos[shape] = self.aspace[item.RequestedNewNodeId]

    def _attr(self, name: str, item: ua.AddNodesItem) -> AttributeValue:
        """One attribute made exactly as asyncua makes it."""
        scratch = NodeData(item.RequestedNewNodeId)
        self.nms._add_node_attr(item.NodeAttributes, scratch, name, add_timestamps=True)
        return scratch.attributes[getattr(AttributeIds, name)]

    def _shared_name(self, name: str, item: ua.AddNodesItem) -> AttributeValue:
        text = getattr(item.NodeAttributes, name)
        key = (name, (text.Text, text.Locale))
        av = self._names.get(key)
        if av is None:
            av = self._names[key] = self._attr(name, item)
        return av

    def _clone(self, proto: NodeData, item: ua.AddNodesItem, parent: NodeData) -> NodeData:
        nid = item.RequestedNewNodeId
        node = NodeData(nid)
        attrs = dict(proto.attributes)
        attrs[AttributeIds.NodeId] = AttributeValue(ua.DataValue(ua.Variant(nid, ua.VariantType.NodeId)))
        attrs[AttributeIds.BrowseName] = AttributeValue(
            ua.DataValue(ua.Variant(item.BrowseName, ua.VariantType.QualifiedName))
        )
        attrs[AttributeIds.DisplayName] = self._shared_name("DisplayName", item)
        attrs[AttributeIds.Description] = self._shared_name("Description", item)
        if AttributeIds.Value in attrs:
            if nid in self.mutable:
                attrs[AttributeIds.Value] = self._attr("Value", item)
            else:
                value = item.NodeAttributes.Value
                vkey = (int(value.VariantType), _frozen(value.Value), value.is_array)
                av = self._values.get(vkey)
                if av is None:
                    av = self._values[vkey] = self._attr("Value", item)
                attrs[AttributeIds.Value] = av
        node.attributes = attrs
        # the parent's forward reference (asyncua's _add_ref_from_parent, without its scan of the
        # parent's references: a new node cannot be among them)
        desc = ua.ReferenceDescription()
        desc.ReferenceTypeId = item.ReferenceTypeId
        desc.NodeId = nid
        desc.NodeClass = item.NodeClass
        desc.BrowseName = item.BrowseName
        desc.DisplayName = item.NodeAttributes.DisplayName
        desc.TypeDefinition = item.TypeDefinition
        desc.IsForward = True
        parent.references.append(desc)
        # the child's inverse reference to its parent, then its type definition, as asyncua orders them
        key = (item.ParentNodeId, item.ReferenceTypeId)
        inverse = self._inverse.get(key)
        if inverse is None:
            inverse = self._inverse[key] = self._reference(item, parent)
        node.references.append(inverse)
        if not item.TypeDefinition.is_null():
            typedef = self._typedefs.get(item.TypeDefinition)
            if typedef is None:
                typedef = self._typedefs[item.TypeDefinition] = self._typedef_reference(item)
            node.references.append(typedef)
        return node

    def _reference(self, item: ua.AddNodesItem, parent: NodeData) -> ua.ReferenceDescription:
        scratch = NodeData(item.RequestedNewNodeId)
        self.nms._add_ref_to_parent(scratch, item, parent)
        return scratch.references[0]

    def _typedef_reference(self, item: ua.AddNodesItem) -> ua.ReferenceDescription:
        scratch = NodeData(item.RequestedNewNodeId)
        self.nms._add_type_definition(scratch, item)
        return scratch.references[0]
