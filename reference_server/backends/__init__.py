"""Backends: what generates behind the HTTP layer (base.py is the seam)."""
