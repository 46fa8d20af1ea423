"""canbridge opcua plugin."""
