"""``python -m xenguest_agent`` runs the command-line interface."""


from __future__ import annotations

import sys

from xenguest_agent.cli import main

sys.exit(main())
