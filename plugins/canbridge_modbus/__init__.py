"""canbridge modbus plugin."""
