"""The exception tree: every failure the product expects, mapped once at the boundary.

    ReconcilerError
    ├── UsageError                 bad command-line use (exit 64)
    ├── DesiredError               the desired state is invalid; carries every Problem found
    ├── ConfigError                settings or environment are wrong (missing variable, bad URL)
    ├── StoreError                 the ledger could not be read or written
    ├── StalePlanError             a saved plan no longer matches desired + observed
    └── TargetError                a target failed; always names the target
        ├── TemporaryTargetError   worth retrying: connection, timeout, 408, 429, 5xx
        └── PermanentTargetError   retrying will not help: auth, 4xx, malformed responses

Foreign exceptions (aiohttp, sqlite3, yaml, pydantic) never cross a module boundary: the module
that calls the library maps them here, chained with `from`. Messages never carry secrets.
"""

from __future__ import annotations

from dataclasses import dataclass


class ReconcilerError(Exception):
    """Root of every error the product expects; anything else is a bug."""


class UsageError(ReconcilerError):
    """The command line was used wrongly."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Problem:
    """One thing wrong with the desired state, and where."""

    source: str
    message: str
    line: int | None = None
    column: int | None = None
    person_id: str | None = None

    def __str__(self) -> str:
        where = self.source
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        who = f"person {self.person_id}: " if self.person_id is not None else ""
        return f"{where}: {who}{self.message}"


class DesiredError(ReconcilerError):
    """The desired state is invalid; nothing is planned from it."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        count = len(problems)
        head = f"desired state is invalid ({count} problem{'s' if count != 1 else ''})"
        super().__init__(head + "".join(f"\n  {p}" for p in problems))


class ConfigError(ReconcilerError):
    """Settings or the environment are wrong."""


class StoreError(ReconcilerError):
    """The store (ledger, passes) could not be read or written."""


class StalePlanError(ReconcilerError):
    """A saved plan was computed against a desired state or targets that have changed since."""


class TargetError(ReconcilerError):
    """A target could not be read or written."""

    def __init__(self, target: str, message: str) -> None:
        self.target = target
        self.message = message
        super().__init__(f"target {target}: {message}")


class TemporaryTargetError(TargetError):
    """Retrying later may succeed: connection errors, timeouts, 408, 429, 5xx."""

    def __init__(self, target: str, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(target, message)
        self.retry_after = retry_after


class PermanentTargetError(TargetError):
    """Retrying will not help: wrong credentials, rejected input, malformed responses."""
