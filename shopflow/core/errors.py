"""Errors a user can act on.

Every failure caused by input (a file, a column, a row, a param) raises a `ShopflowError`
whose message names what is wrong and where. The CLI prints that message without a
traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class ShopflowError(Exception):
    """A failure the user can fix: the message says what and where."""

    exit_code = 2


class ConfigError(ShopflowError):
    """params.yaml (or a CLI override) is invalid."""


class SourceError(ShopflowError):
    """A source cannot be read: missing file, bad encoding, missing columns, bad types."""


class EmptyDataError(SourceError):
    """A source or a window holds no rows where rows are required."""


class DataValidationError(ShopflowError):
    """A critical data expectation failed; nothing downstream may run."""

    exit_code = 3


class StageInputError(ShopflowError):
    """A stage was asked to run on inputs an earlier stage did not approve."""


class DeployError(StageInputError):
    """A new champion could not be deployed; what served before still serves."""


class TrainingError(ShopflowError):
    """Training ran but did not do what the stage promises (e.g. the loss did not drop)."""


def capped_lines(message: str, limit: int = 500) -> str:
    """`message` with each line cut to `limit` characters: an error quoting a source's line
    (which can be megabytes long) must not flood the log."""
    return "\n".join(
        line if len(line) <= limit else f"{line[: limit - 1]}…({len(line):,} chars)"
        for line in message.splitlines()
    )


def preview(value: object, limit: int = 80) -> str:
    """Render a value for an error message without flooding it (a title can be 50 MB)."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[: limit - 1]}…({len(text):,} chars)"
