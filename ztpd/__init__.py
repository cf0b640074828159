"""ztpd — zero-touch provisioning for edge sites."""

__version__ = "0.1.0"
