"""Adapters around the core: systemd, the watchdog observer, process and socket liveness.

They follow the index's change feed and publish into it; the core never calls them.
"""
