"""Exceptions shared by several modules (kept here so that no two modules import each other)."""


class DataError(ValueError):
    """Bad training data, with the row and field in the message."""
