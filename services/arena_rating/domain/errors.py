"""The one error the rating domain raises for bad input."""

from __future__ import annotations


class RatingInputError(ValueError):
    """Input the rating math cannot use; the message names ``file:line`` or the field.

    A ``ValueError`` subclass so that adapters can map it to INVALID_ARGUMENT.
    """

    def __init__(self, message: str, *, source: str | None = None, line: int | None = None) -> None:
        where = f"{source}:{line}: " if source is not None and line is not None else ""
        where = where or (f"{source}: " if source is not None else "")
        super().__init__(where + message)
        self.source = source
        self.line = line
