"""The short run of issue 9's fault campaign (tests/faults/; the full run is ``./dev faults``).

60 faults drawn with a fixed seed over every fault class on both tiers (the dom0 socket and the
unprivileged guest domain of the real xenstored), against the real agent CLI.  It fails when any
fault crashed or wedged the daemon, ran an untrusted hook, or left keys missing or wrong after the
fault was lifted (or a class's own check, such as "acted once", failed); the message names every
failing class and tier with an example.  The guard that decides "lost" is generous (the class's
stated time + campaign.GUARD seconds): recovery times are reported, never asserted.
"""

from faults import campaign
from faults.classes import FAULTS

SEED = 20261130
COUNT = 60


def test_short_fault_campaign_no_crash_no_untrusted_execution_no_lost_key():
    results = campaign.run(COUNT, SEED, ("dom0", "guest"), idle=3.0)
    assert len(results.records) == COUNT
    injected = {(r.name, r.tier) for r in results.records}
    every = {(c.name, t) for c in FAULTS.values() for t in c.tiers}
    assert injected == every, f"classes never injected: {sorted(every - injected)}"
    failures = results.failures()
    assert not failures, (f"{len(failures)} fault classes failed (seed {SEED}):\n"
                          + "\n".join(failures) + "\n\n" + campaign.table(results))
