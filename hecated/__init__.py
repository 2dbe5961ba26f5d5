"""hecated: the primary Hecate daemon and registry of plugin daemons.

The version lives here and only here: packaging metadata, ``hecated --version``
and ``GET /health`` all read it from this attribute.
"""

__version__ = "0.1.0"
