"""The lab: a virtual edge LAN (network namespaces, a bridge, QEMU VMs) with ztpd serving it.

``net`` has the namespaces and bridge (shared with the tests), ``vm`` the VM shapes and QEMU
command line, ``forward`` the host-loopback port forward, ``watch`` the progress read from the
store, and ``lab`` the ``up``/``down``/``status`` orchestration behind ``ztpd lab``.
"""

from ztpd.lab.lab import Lab, LabState, Settings

__all__ = ["Lab", "LabState", "Settings"]
