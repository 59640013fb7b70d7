"""Detectors: one module each, and the registry (``registry.py``) that names, configures and builds them."""
