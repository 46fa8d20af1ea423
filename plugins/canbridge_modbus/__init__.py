"""canbridge modbus plugin: Modbus TCP and RTU server of the mapping table (see docs/modbus.md)."""
