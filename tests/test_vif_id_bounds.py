"""A VIF id read from sysfs is a xenbus device id, never thousands of digits
(issue 9, item 8).  Linux registers a front-end only when "<type>/<id>" of its
nodename "device/<type>/<id>" fits XEN_BUS_ID_SIZE (20 bytes with the NUL;
torvalds/linux drivers/xen/xenbus/xenbus_probe_frontend.c, frontend_bus_id), so
a vif's id has at most 15 characters.  Anything else (thousands of digits,
which Python refuses to convert past 4,300 and which made the whole interface
collector fail, or non-ASCII digits, which int() would accept) is no VIF id:
that one interface is reported without one, the others are unaffected."""

from xenguest_agent.backends.linux import vif_from_nodename


def test_a_plain_id():
    assert vif_from_nodename("device/vif/3") == 3
    assert vif_from_nodename("device/vif/" + "9" * 15) == int("9" * 15)


def test_thousands_of_digits_are_no_vif_id():
    assert vif_from_nodename("device/vif/" + "9" * 5000) is None  # int() raised ValueError
    assert vif_from_nodename("device/vif/" + "9" * 16) is None


def test_non_ascii_digits_are_no_vif_id():
    assert vif_from_nodename("device/vif/\u0663") is None  # ARABIC-INDIC DIGIT THREE
