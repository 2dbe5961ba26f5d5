"""The middle of the house: names and paths, plugin.toml, the index and the store, a
plugin's run state (runstate) and the status rule (status).

Standard library only (one exception, ``tomli_w``, the writing half of ``tomllib``)
and never the edge: the HTTP layer, the adapters and the tools import the core, never
the reverse. ``import-linter`` checks both rules (``make test``).
"""
