"""The one redaction path: logs, plan documents and files, errors, /status and `status` all pass
through a Redactor before they leave the process.

Two rules: a value under a secret or sensitive key (password, api_key, id_number, pin, …) is
replaced whatever it is, and the text of every known secret value (the targets' passwords and
keys, resolved from the environment) is replaced wherever it turns up, say inside an error a
device echoed back. Pure: the process-wide instance lives in reconciler.logs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

REDACTED = "[redacted]"

#: Keys whose scalar values are never shown. A mapping under such a key is walked instead: the
#: plan document's `"id_number": {"sensitive": true}` says only that the field changes.
SECRET_KEYS = frozenset(
    {
        "password",
        "passwd",
        "secret",
        "api_key",
        "apikey",
        "token",
        "access_token",
        "authorization",
        "cookie",
        "initial_password",
        "webhook_secret",
        "x-ss-api-key",
        "id_number",
        "pin",
    }
)
#: Keys holding hashes by construction: never scrubbed, so a plan stays comparable.
_HASH_KEYS = frozenset(
    {"fingerprint", "plan_fingerprint", "desired_digest", "observed_digest", "digest"}
)
#: Shorter values are not scrubbed from text: "1234" would maim every number in a log line.
#: Secrets that short are rejected by no device, but are never worth hiding this way either.
MIN_SECRET_LENGTH = 6


class Redactor:
    """Replaces secrets in what is about to be shown; immutable, `with_secrets` extends it."""

    __slots__ = ("_secrets",)

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # Longest first, so a secret that contains another is replaced whole.
        self._secrets: tuple[str, ...] = tuple(
            sorted({s for s in secrets if len(s) >= MIN_SECRET_LENGTH}, key=len, reverse=True)
        )

    def with_secrets(self, secrets: Iterable[str]) -> Redactor:
        return Redactor((*self._secrets, *secrets))

    def text(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text

    def value(self, value: Any) -> Any:
        """A copy of a JSON-like value (mappings, lists, scalars) with secrets replaced."""
        if isinstance(value, str):
            return self.text(value) if self._secrets else value
        if isinstance(value, Mapping):
            return {key: self._entry(key, item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [self.value(item) for item in value]
        return value

    def _entry(self, key: Any, item: Any) -> Any:
        name = key.lower() if isinstance(key, str) else key
        if name in _HASH_KEYS:
            return item
        if name in SECRET_KEYS and item is not None and not isinstance(item, Mapping | bool):
            return REDACTED
        return self.value(item)
