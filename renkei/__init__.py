"""Renkei kernel: settings, database, keys, XML security, the app factory and the CLI.

Shared by every room; holds no domain logic.
"""
__version__ = "0.1.0"
