"""Errors every backend may raise (kept import-light: the CLI imports this module eagerly)."""


class BackendError(RuntimeError):
    """An inference request that could not be answered (server down, timeouts after retries,
    an error response)."""


class RequestTooLarge(BackendError, ValueError):
    """A request the backend cannot hold (context length, memory); names the setting to change."""
