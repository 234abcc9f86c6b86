"""The fault campaign of issue 9 (``./dev faults``; a short run in tests/test_faults_short.py).

``bed`` builds one tier (the dom0 socket or an unprivileged guest domain on the real xenstored)
with the real agent CLI in a subprocess; ``classes`` is the registry of fault classes; ``campaign``
injects them at random with a seed, checks the tree after each and writes the table.
"""
