"""Tools built on the library: the local PX stand-in and the bulk loader.

Nothing in the library imports them; ``python -m px_middleware devserver|load`` runs them.
"""
