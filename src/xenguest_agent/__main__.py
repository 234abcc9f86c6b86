"""``python -m xenguest_agent`` runs the command-line interface."""

import sys

from xenguest_agent.cli import main

sys.exit(main())
