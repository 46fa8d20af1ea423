"""Attack classes per protocol, resource limits before authentication, and faults (disk full, signals)."""
