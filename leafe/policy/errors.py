"""Errors every backend may raise (kept import-light: the CLI imports this module eagerly)."""


class BackendError(RuntimeError):
    """An inference request that could not be answered (server down, timeouts after retries,
    an error response)."""
