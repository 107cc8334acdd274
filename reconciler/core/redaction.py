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
import re
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import unquote, unquote_plus

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
        """`value` as JSON with secrets replaced; what orjson cannot encode goes to `default`."""
        return self.lines((value,), default)[:-1]

    def lines(
        self, values: Sequence[Any], default: Callable[[Any], Any], *, objects: int | None = None
    ) -> bytes:
        """Each value as `json` shows it, one per line (a newline after each).

        The hot path of every log line: the lines are serialized once, and the text of them all
        is searched once for what a rule may apply to (a secret key holding a value, a known
        secret); only then is each line walked for a copy. Many lines at once (a plan's
        change lines) share the search.

        `objects`: values whose own keys the key rule never applies to (change documents, whose
        every field shows as an object: core.changes.document_objects) open this many JSON
        objects in all. A text that opens no more has no key inside a value, so only known
        secrets are searched for: the key search was a third of a change line's cost.
        """
        by_default = False
        text = b""

        def shown(item: Any) -> Any:
            # What orjson shows by `default` is looked at before it is shown: walk it.
            nonlocal by_default
            by_default = True
            return default(item)

        try:
            text = b"".join([orjson.dumps(v, default=shown, option=_OPTIONS) for v in values])
        except TypeError:  # keys orjson refuses (not str): the walk keeps what it can show
            by_default = True
        keyed = objects is None or text.count(b"{") > objects
        if not by_default and not self._may_apply(text, keyed):
            return text
        return b"".join([self._walked(v, default) for v in values])

    def _may_apply(self, text: bytes, key_rule: bool = True) -> bool:
        """Whether a rule may apply anywhere in this JSON text (never a false no)."""
        for needle in self._needles:
            if needle in text:
                return True
        if not key_rule:
            return False
        # Keys are compared lower-cased, as the walk does. Of all non-ASCII characters only the
        # Kelvin sign lowers to ASCII alone ("k"), so the bytes lowered, it replaced, find what
        # str.lower would, at a quarter of the cost of decoding the text.
        lowered = text.lower()
        if not text.isascii():
            lowered = lowered.replace(_KELVIN, b"k")
        return _SECRET_KEY_SHOWN.search(lowered) is not None

    def _walked(self, value: Any, default: Callable[[Any], Any]) -> bytes:
        shown = self.value(value)
        try:
            return orjson.dumps(shown, default=default, option=_OPTIONS | orjson.OPT_NON_STR_KEYS)
        except TypeError:  # an integer beyond 64 bits: a log line must never fail for it
            return json.dumps(shown, default=default, ensure_ascii=False).encode() + b"\n"

    def _entry(self, key: Any, item: Any) -> Any:
        name = key.lower() if isinstance(key, str) else key
        if name in _HASH_KEYS:
            return item
        if _replaced(name, item):
            return REDACTED
        return self.value(item)


#: Query parameters of a connection URL that hold a password (libpq's names).
URL_SECRET_PARAMETERS = frozenset({"password", "sslpassword"})


def url_secrets(url: str) -> frozenset[str]:
    """The secrets a connection URL holds (the store's, an HR database's): its password and
    password parameters, as written and percent-decoded, for a Redactor."""
    _, userinfo, _, query = _url_parts(url)
    found = {userinfo.partition(":")[2]}
    for pair in query.split("&"):
        key, _, value = pair.partition("=")
        if unquote_plus(key) in URL_SECRET_PARAMETERS:
            found.add(value)
    found |= {unquote_plus(s) for s in found} | {unquote(s) for s in found}
    return frozenset(s for s in found if s)


def url_shown(url: str) -> str:
    """A connection URL as messages show it: its password and password parameters masked
    (`postgresql://hr:***@db/hr?password=***`), the rest as written."""
    head, userinfo, rest, query = _url_parts(url)
    if ":" in userinfo:
        userinfo = userinfo.partition(":")[0] + ":***"
    shown = head + (f"{userinfo}@" if userinfo else "") + rest
    if not query:
        return shown
    return f"{shown}?" + "&".join(
        f"{key}=***" if unquote_plus(key) in URL_SECRET_PARAMETERS else pair
        for pair in query.split("&")
        for key in (pair.partition("=")[0],)
    )


def _url_parts(url: str) -> tuple[str, str, str, str]:
    """scheme:// (or ""), the user info before the last "@" of the authority, the hosts and path
    after it, and the query: split as written, so that what is shown is what was given. A
    password with a raw "/" or "?" still counts as one (libpq would refuse the URL)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "", "", url, ""
    rest, _, query = rest.partition("?")
    userinfo, _, rest = rest.rpartition("@")
    return scheme + sep, userinfo, rest, query


def _replaced(name: Any, item: Any) -> bool:
    """The key rule: under a secret key (`name` lower-cased) anything but null, a boolean or a
    mapping (walked on: the plan's `{"sensitive": true}` marker) is replaced."""
    return name in SECRET_KEYS and item is not None and not isinstance(item, Mapping | bool)


def _alternation(words: Collection[bytes]) -> bytes:
    """A regular expression that matches exactly these words, their common prefixes taken out
    once (`pass(?:wd|word)`): `re` tries the branches of an alternation one by one at every
    place it may start, and over a run of change lines the flat form of the secret keys took
    306 µs, this one 173."""
    rests: dict[bytes, list[bytes]] = {}
    ends = False
    for word in sorted(set(words)):
        if word:
            rests.setdefault(word[:1], []).append(word[1:])
        else:
            ends = True
    branches = [re.escape(first) + _alternation(rest) for first, rest in rests.items()]
    if not branches:
        return b"" if ends else b"(?!)"  # the empty word alone, or no word at all
    body = branches[0] if len(branches) == 1 else b"(?:" + b"|".join(branches) + b")"
    if not ends:
        return body
    return b"(?:" + body + b")?"


#: A secret key in JSON text (lower-cased) with a value the key rule replaces. An unescaped
#: `"key":` is that key (inside a string the quote is escaped); its value is left alone only as
#: null, true, false or an object (a dict: other objects went to `default`). One scan for all the
#: keys: a `find` a key took nearly three times as long over a run of change lines.
_SECRET_KEY_SHOWN = re.compile(
    b'"' + _alternation([key.encode() for key in SECRET_KEYS]) + b'":(?![ntf{])'
)
_KELVIN = "\u212a".encode()
#: Dataclasses go to `default` too (their repr): the walk does not see into them, so the text
#: must not show their fields as an object the key rule would pass.
_OPTIONS = orjson.OPT_APPEND_NEWLINE | orjson.OPT_PASSTHROUGH_DATACLASS
