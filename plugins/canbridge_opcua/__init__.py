"""canbridge's OPC UA northbound plugin (asyncua): the mapping table as an address space with units,
ranges, enumerations, quality and source timestamps; writes through the bridge's write path.

See docs/opcua.md. The entry point is :mod:`canbridge_opcua.plugin`.
"""
