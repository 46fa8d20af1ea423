"""canbridge rest plugin."""
