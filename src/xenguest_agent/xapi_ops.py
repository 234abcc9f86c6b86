"""Which guest-dependent operations xapi allows on a running VM, and which key decides each.

An extension of the model in :mod:`xenguest_agent.xapi`, written from xapi-project/xen-api:

* ``ocaml/xapi/xapi_vm_lifecycle.ml`` ``check_op_for_feature`` (with ``has_feature``,
  ``get_feature`` and ``has_definitely_booted_pv``): for a running VM, "implicit support"
  holds when the VM booted PV (``current_domain_type`` pv, pv_in_pvh or pvh) or its PV
  drivers are detected (``Xapi_pv_driver_version.has_pv_drivers``).  ``suspend``,
  ``checkpoint``, ``pool_migrate`` and ``migrate_send`` are refused first of all when the
  ``other`` map holds ``data-cant-suspend-reason`` (VM_NON_SUSPENDABLE), else, without
  implicit support, unless ``feature-suspend`` is "1" (VM_LACKS_FEATURE).  Every other
  operation is allowed with implicit support; without it ``clean_shutdown`` needs
  ``feature-shutdown`` or ``feature-poweroff``, ``clean_reboot`` ``feature-shutdown`` or
  ``feature-reboot``, ``changing_VCPUs_live`` ``feature-vcpu-hotplug`` (all "1").
  ``other`` is ``control/*`` as xapi copies it (:func:`xenguest_agent.xapi.guest_metrics`).
* ``ocaml/xapi/xapi_vif_helpers.ml`` and ``xapi_vbd_helpers.ml`` ``valid_operations``: VIF
  and VBD ``plug``/``unplug`` on a running VM are checked only when the domain type is HVM:
  ``can_use_hotplug_vif``/``vbd`` "yes" allows, "no" refuses, "unspecified" allows when
  ``PV_drivers_detected`` (xenopsd: some device's backend reached XenbusStateConnected,
  ``xenops_server_xen.ml`` ``maybe_update_pv_drivers_detected``) and otherwise falls back to
  ``has_pv_drivers`` (VM_MISSING_PV_DRIVERS).

The rules use ``strict``, as xapi computes ``allowed_operations`` (what XenCenter and Xen
Orchestra offer).  Not modelled: what the host alone knows (``platform:nomigrate``,
nested virtualisation, blocked operations, VDI caching, SR-IOV VIFs, HVM CD drives).
"""

from __future__ import annotations

from xenguest_agent.records import dataclass
from xenguest_agent.xapi import XapiView

#: the guest's domain type as the guest sees it; "unknown" is judged as HVM (the strictest)
DOMAIN_TYPES = ("pv", "pvh", "hvm", "unknown")

PV_ADDONS_KEYS = {"major": "attr/PVAddons/MajorVersion", "minor": "attr/PVAddons/MinorVersion",
                  "micro": "attr/PVAddons/MicroVersion", "build": "attr/PVAddons/BuildVersion"}


@dataclass(frozen=True)
class Verdict:
    """One operation: ``op`` is xapi's name, ``key`` what decides it (a XenStore key
    relative to the home, or ``domain type``), ``error`` xapi's error when refused."""

    op: str
    allowed: bool
    key: str
    why: str
    error: str | None = None


def drivers_key(view: XapiView) -> str:
    """The PVAddons key that decides PV_drivers_version (the one that makes it Unknown)."""
    reason = view.drivers.reason or ""
    for name, key in PV_ADDONS_KEYS.items():
        if reason.startswith(name + " "):
            return key
    return "attr/PVAddons"


def _feature(view: XapiView, name: str) -> bool:
    """``has_feature``: the ``other`` map holds ``name`` with the value "1"."""
    return view.metrics.other.get(name) == "1"


def _implicit(view: XapiView, domain_type: str) -> tuple[str, str] | None:
    """(key, why) when ``check_op_for_feature``'s implicit support holds, else None."""
    if domain_type in ("pv", "pvh"):
        return "domain type", f"a {domain_type.upper()} guest supports it implicitly"
    if view.drivers.detected:
        return "attr/PVAddons", "PV drivers detected: they imply every feature"
    return None


def _suspend_like(op: str, view: XapiView, domain_type: str) -> Verdict:
    reason = view.metrics.other.get("data-cant-suspend-reason")
    if reason is not None:
        return Verdict(op, False, "data/cant_suspend_reason", f"the guest says it cannot: {reason!r}",
                       "VM_NON_SUSPENDABLE")
    implicit = _implicit(view, domain_type)
    if implicit is not None:
        return Verdict(op, True, *implicit)
    if _feature(view, "feature-suspend"):
        return Verdict(op, True, "control/feature-suspend", "the guest advertises it")
    return Verdict(op, False, "control/feature-suspend",
                   "HVM guest without PV drivers and without control/feature-suspend=1",
                   "VM_LACKS_FEATURE")


def _needs_feature(op: str, view: XapiView, domain_type: str, features: tuple[str, ...]) -> Verdict:
    implicit = _implicit(view, domain_type)
    if implicit is not None:
        return Verdict(op, True, *implicit)
    for name in features:
        if _feature(view, name):
            return Verdict(op, True, f"control/{name}", "the guest advertises it")
    wanted = " or ".join(f"control/{name}=1" for name in features)
    return Verdict(op, False, f"control/{features[-1]}",
                   f"HVM guest without PV drivers and without {wanted}", "VM_LACKS_FEATURE")


def _hotplug(kind: str, view: XapiView, domain_type: str, detected: bool | None) -> Verdict:
    op = f"{kind}_plug"
    if domain_type in ("pv", "pvh"):
        return Verdict(op, True, "domain type", f"xapi checks only HVM guests; this one is "
                       f"{domain_type.upper()}")
    key = f"feature/hotplug/{kind}"
    claim = (view.metrics.can_use_hotplug_vif if kind == "vif" else view.metrics.can_use_hotplug_vbd)
    if claim == "yes":
        return Verdict(op, True, key, "the guest claims support")
    if claim == "no":
        return Verdict(op, False, key, "the guest says it does not support it",
                       "OPERATION_NOT_ALLOWED")
    if detected:
        return Verdict(op, True, "device/*/backend state",
                       "xenopsd saw a device connected (PV drivers detected)")
    if view.drivers.detected:
        return Verdict(op, True, "attr/PVAddons", "PV drivers version known")
    return Verdict(op, False, drivers_key(view),
                   f"no {key}, no connected PV device and PV_drivers_version Unknown",
                   "VM_MISSING_PV_DRIVERS")


def allowed_operations(view: XapiView, domain_type: str,
                       pv_drivers_detected: bool | None) -> tuple[Verdict, ...]:
    """The verdicts for a running VM of ``domain_type`` (see :data:`DOMAIN_TYPES`);
    ``pv_drivers_detected``: xenopsd's evidence (None: could not be read, taken as False)."""
    if domain_type not in DOMAIN_TYPES:
        raise ValueError(f"domain type {domain_type!r} is not one of {DOMAIN_TYPES}")
    judged = "hvm" if domain_type == "unknown" else domain_type
    return (
        _needs_feature("clean_shutdown", view, judged, ("feature-shutdown", "feature-poweroff")),
        _needs_feature("clean_reboot", view, judged, ("feature-shutdown", "feature-reboot")),
        _suspend_like("suspend", view, judged),
        _suspend_like("pool_migrate", view, judged),
        _needs_feature("changing_VCPUs_live", view, judged, ("feature-vcpu-hotplug",)),
        _hotplug("vif", view, judged, pv_drivers_detected),
        _hotplug("vbd", view, judged, pv_drivers_detected),
    )
