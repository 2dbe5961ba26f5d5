"""``python -m hecated``: the daemon, as the ``hecated`` console script runs it."""

import sys

from hecated.cli import hecated_main

sys.exit(hecated_main())
