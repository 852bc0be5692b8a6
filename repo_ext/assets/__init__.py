"""Models built locally from files that install from PyPI (no model hub needed)."""
