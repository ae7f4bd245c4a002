"""Errors every backend may raise (kept import-light: the CLI imports this module eagerly)."""


class BackendError(RuntimeError):
    """An inference request that could not be answered (server down, timeouts after retries,
    an error response)."""


class RequestTooLarge(BackendError, ValueError):
    """A request the backend cannot hold (context length, memory); names the setting to change."""


def first_line(error: BaseException) -> str:
    """The first line of ``error``'s message (library errors run to many lines), or its type."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
