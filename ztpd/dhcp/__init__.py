"""DHCP and PXE: proxy and full modes (see docs/dhcp.md). app.py uses ``service.DhcpService``."""
