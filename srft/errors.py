"""Exceptions shared by several modules (kept here so that no two modules import each other)."""


class DataError(ValueError):
    """Bad training data, with the row and field in the message."""


class TrainingError(RuntimeError):
    """The run cannot go on (non-finite training, nothing to resume); the message says why
    and what is intact. `srft train` reports it and exits with status 2."""
