"""Errors every backend may raise (kept import-light: the CLI imports this module eagerly)."""


class BackendError(RuntimeError):
    """An inference request that could not be answered (server down, timeouts after retries,
    an error response)."""


class RequestTooLarge(BackendError, ValueError):
    """A request the backend cannot hold (context length, memory); names the setting to change."""


def first_line(error: BaseException, limit: int = 300) -> str:
    """``error``'s message on one line, cut at ``limit`` characters (library errors run to many
    lines, some only say what is wrong on the second), or its type when it has none."""
    text = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
    if not text:
        return type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
