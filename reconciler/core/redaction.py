"""The one redaction path: logs, plan documents and files, errors, /status and `status` all pass
through a Redactor before they leave the process.

Two rules: a value under a secret or sensitive key (password, api_key, id_number, pin, …) is
replaced whatever it is, and the text of every known secret value (the targets' passwords and
keys, resolved from the environment) is replaced wherever it turns up, say inside an error a
device echoed back. `json` serializes once and walks only what may hold a secret. Pure: the
process-wide instance lives in reconciler.logs.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import orjson

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

#: Keys seen not to be secret, so that a log line's keys are each looked up once: bounded, as
#: keys can come from data (labels).
_PLAIN_KEYS: set[str] = set()
_PLAIN_KEYS_KEPT = 4096


class Redactor:
    """Replaces secrets in what is about to be shown; immutable, `with_secrets` extends it."""

    __slots__ = ("_needles", "_secrets")

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # Longest first, so a secret that contains another is replaced whole.
        self._secrets: tuple[str, ...] = tuple(
            sorted({s for s in secrets if len(s) >= MIN_SECRET_LENGTH}, key=len, reverse=True)
        )
        # How each secret may read inside JSON text: as itself, or escaped (quotes, controls).
        self._needles = frozenset(
            form for s in self._secrets for form in (s.encode(), orjson.dumps(s)[1:-1])
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

    def json(self, value: Any, default: Callable[[Any], Any]) -> bytes:
        """`value` as JSON with secrets replaced; what orjson cannot encode goes to `default`.

        The hot path of every log line: serialized once, and walked for a copy only when a rule
        applies (a secret key holds a value, or a known secret is in the text).
        """
        try:
            line = orjson.dumps(value, default=default)
        except TypeError:  # keys orjson refuses (not str): the walk keeps what it can show
            line = None
        if line is not None and _keys_harmless(value):
            for needle in self._needles:
                if needle in line:
                    break
            else:
                return line
        shown = self.value(value)
        try:
            return orjson.dumps(shown, default=default, option=orjson.OPT_NON_STR_KEYS)
        except TypeError:  # an integer beyond 64 bits: a log line must never fail for it
            return json.dumps(shown, default=default, ensure_ascii=False).encode()

    def _entry(self, key: Any, item: Any) -> Any:
        name = key.lower() if isinstance(key, str) else key
        if name in _HASH_KEYS:
            return item
        if _replaced(name, item):
            return REDACTED
        return self.value(item)


def _replaced(name: Any, item: Any) -> bool:
    """The key rule: under a secret key (`name` lower-cased) anything but null, a boolean or a
    mapping (walked on: the plan's `{"sensitive": true}` marker) is replaced."""
    return name in SECRET_KEYS and item is not None and not isinstance(item, Mapping | bool)


def _keys_harmless(value: Any) -> bool:
    """No secret key in `value` holds what the key rule would replace (a walk without a copy).

    Any mapping but a dict answers no: orjson shows it by its repr, which the walk would not.
    """
    if isinstance(value, dict):
        for key, item in value.items():
            if key not in _PLAIN_KEYS:
                if not isinstance(key, str):
                    return False
                name = key.lower()
                if _replaced(name, item):
                    return False
                if name not in SECRET_KEYS and len(_PLAIN_KEYS) < _PLAIN_KEYS_KEPT:
                    _PLAIN_KEYS.add(key)
            if type(item) not in _SCALARS and not _keys_harmless(item):
                return False
        return True
    if isinstance(value, list | tuple):
        return all(type(item) in _SCALARS or _keys_harmless(item) for item in value)
    return not isinstance(value, Mapping)


#: Exact types that hold no key: the walk skips them without asking the Mapping ABC.
_SCALARS = frozenset({str, int, float, bool, type(None)})
