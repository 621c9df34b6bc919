"""The errors reforge raises on purpose, each with the CLI exit code it maps to."""


class ReforgeError(Exception):
    """A user's mistake (bad file, unsupported operator, wrong input): one line, exit 2."""

    exit_code = 2


class VerificationError(ReforgeError):
    """A rewritten model disagrees with its reference beyond the pass's tolerance: exit 3."""

    exit_code = 3


def one_line(err: BaseException, limit: int = 300) -> str:
    """The informative line of an exception's message (TVM puts it after a C++ backtrace)."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    if not lines:
        return type(err).__name__
    text = lines[-1] if lines[0].startswith("Traceback") else lines[0]
    return text[:limit]
