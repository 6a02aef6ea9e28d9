"""Prometheus exporter for Cloudflare Zero Trust WARP device registrations."""

__version__ = "0.1.0"
