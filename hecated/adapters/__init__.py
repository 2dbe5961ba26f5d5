"""Adapters around the core: systemd, the watchdog observer, process and socket liveness.

They call into the core; the core never calls them by name.
"""
