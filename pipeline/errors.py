"""Error types.  Every user-facing failure is a ``LegalignError`` whose message is one
line naming the file (where there is one) and the problem."""


class LegalignError(ValueError):
    """Base class for errors reported to the user as one line, with a non-zero exit."""

    exit_code = 2


class InputError(LegalignError):
    """An input file is malformed, unreadable or inconsistent."""


class PlanningError(LegalignError):
    """An osteotomy plan cannot be made (e.g. the target cannot be reached)."""


def input_error(message: str, reason: str) -> InputError:
    """An ``InputError`` that carries its failure reason (docs/results-schema.md) instead of
    leaving it to be guessed from the message."""
    err = InputError(message)
    err.reason = reason  # type: ignore[attr-defined]
    return err
