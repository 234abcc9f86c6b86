"""A stand-in publisher used only to develop the system test's machinery (XGS_AGENT=placeholder).

It is NOT the agent and proves nothing about it: every 2 s it rewrites a minimal tree with pyxs so the
boot, save/restore, migration and shutdown plumbing can be exercised before the real agent exists.
"""

import platform
import subprocess
import time

from pyxs import Client


def facts():
    osr = {}
    with open("/etc/os-release") as f:
        for line in f:
            k, _, v = line.strip().partition("=")
            osr[k] = v.strip('"')
    mem = {}
    with open("/proc/meminfo") as f:
        for line in f:
            k, v = line.split(":")
            mem[k] = v.split()[0]
    keys = {
        "attr/PVAddons/MajorVersion": "0", "attr/PVAddons/MinorVersion": "0",
        "attr/PVAddons/MicroVersion": "0", "attr/PVAddons/BuildVersion": "0",
        "attr/PVAddons/Installed": "1",
        "data/os_name": osr.get("PRETTY_NAME", ""), "data/os_distro": osr.get("ID", ""),
        "data/os_majorver": osr.get("VERSION_ID", "0"), "data/os_minorver": "0",
        "data/os_uname": platform.release(),
        "data/meminfo_total": mem["MemTotal"], "data/meminfo_free": mem["MemAvailable"],
        "feature/hotplug/vif": "1",
    }
    out = subprocess.run(["ip", "-o", "addr", "show", "dev", "eth0"], stdout=subprocess.PIPE,
                         universal_newlines=True).stdout
    n = {"inet": 0, "inet6": 0}
    for line in out.splitlines():
        w = line.split()
        fam = w[2]
        keys["attr/vif/0/%s/%d" % ("ipv4" if fam == "inet" else "ipv6", n[fam])] = w[3].split("/")[0]
        n[fam] += 1
    return keys


def main():
    while True:
        try:
            with Client(xen_bus_path="/dev/xen/xenbus") as c:
                c.delete(b"attr/vif")
                for k, v in facts().items():
                    c.write(k.encode(), v.encode())
                c.write(b"data/updated", b"1")
        except Exception as exc:  # a stand-in: keep going whatever happens
            print("placeholder: %r" % exc, flush=True)
        time.sleep(2)


if __name__ == "__main__":
    main()
