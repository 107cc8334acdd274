"""The one redaction path: what it hides and what it leaves readable."""

from __future__ import annotations

import re
from types import MappingProxyType
from urllib.parse import quote

import orjson
from hypothesis import given
from hypothesis import strategies as st

from reconciler.core.changes import (
    Action,
    Change,
    FieldChange,
    Reason,
    change_document,
    document_objects,
)
from reconciler.core.records import Hasher
from reconciler.core.redaction import (
    MIN_SECRET_LENGTH,
    REDACTED,
    Redactor,
    _alternation,
    url_secrets,
    url_shown,
)


def test_secret_keys_are_hidden_whatever_their_value() -> None:
    shown = Redactor().value(
        {"user": "admin", "password": "pw", "headers": {"Authorization": "Bearer x"}, "pin": 1234}
    )
    assert shown == {
        "user": "admin",
        "password": REDACTED,
        "headers": {"Authorization": REDACTED},
        "pin": REDACTED,
    }


def test_the_plan_documents_sensitive_marker_stays() -> None:
    """`id_number: {sensitive: true}` says that the field changes, never its value."""
    change = {"fields": {"id_number": {"sensitive": True}, "name": {"from": "a", "to": "b"}}}
    assert Redactor(["s3cret-pw"]).value(change) == change


def test_known_secret_values_are_scrubbed_from_any_text() -> None:
    redactor = Redactor(["s3cret-lobby-pw"]).with_secrets(["k3y-of-the-cms"])
    echoed = {"error": "device said: bad login s3cret-lobby-pw", "at": ["k3y-of-the-cms!"]}
    assert redactor.value(echoed) == {
        "error": f"device said: bad login {REDACTED}",
        "at": [f"{REDACTED}!"],
    }


def test_hashes_and_short_values_are_left_alone() -> None:
    redactor = Redactor(["abcdef01", "0000"])
    document = {"fingerprint": "sha256:00abcdef0123", "note": "pin 0000 and abcdef01"}
    assert redactor.value(document) == {
        "fingerprint": "sha256:00abcdef0123",
        "note": f"pin 0000 and {REDACTED}",
    }


def test_a_secret_that_contains_another_is_replaced_whole() -> None:
    assert Redactor(["secret", "secret-and-more"]).text("x secret-and-more y") == (
        f"x {REDACTED} y"
    )


@given(
    # Upper case: "[redacted]" itself must not spell a secret again.
    secret=st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_!", min_size=MIN_SECRET_LENGTH),
    before=st.text(),
    after=st.text(),
)
def test_a_known_secret_never_survives(secret: str, before: str, after: str) -> None:
    shown = Redactor([secret]).value({"message": before + secret + after, "n": [secret]})
    assert secret not in shown["message"]
    assert secret not in shown["n"][0]


def test_the_fingerprint_key_never_shows_in_a_repr() -> None:
    """A traceback or a debug log printing the App must not hand out the fingerprint key."""
    key = bytes(range(32))
    assert repr(key) not in repr(Hasher(key))
    assert key.hex() not in repr(Hasher(key))


_KEYS = st.sampled_from(
    ["name", "note", "password", "Pin", "P\u0130N", "id_number", "token", "to\u212aen", "x"]
)
_SECRET_TEXT = st.sampled_from(["s3cret-lobby-pw", 'quo"te-secret', "plain"])
_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.text(max_size=8)
    | _SECRET_TEXT
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(_KEYS | st.text(max_size=4), inner, max_size=4)
    ),
    max_leaves=12,
)


@given(value=st.dictionaries(_KEYS, _VALUES, max_size=5))
def test_a_log_line_shows_what_the_walk_shows(value: dict[str, object]) -> None:
    """The log line's fast path (serialize, then walk only if a rule may apply) renders
    exactly what walking first would."""
    redactor = Redactor(["s3cret-lobby-pw", 'quo"te-secret'])
    assert orjson.loads(redactor.json(value, repr)) == orjson.loads(
        orjson.dumps(redactor.value(value), default=repr)
    )


@given(values=st.lists(st.dictionaries(_KEYS, _VALUES, max_size=5), max_size=6))
def test_many_log_lines_show_what_the_walk_shows(values: list[dict[str, object]]) -> None:
    """Lines rendered together (one search over all their text) show, line by line, what
    walking each first would: a rule that applies to one line is never missed."""
    redactor = Redactor(["s3cret-lobby-pw", 'quo"te-secret'])
    text = redactor.lines(values, repr)
    assert text.count(b"\n") == len(values)
    assert [orjson.loads(line) for line in text.splitlines()] == [
        orjson.loads(orjson.dumps(redactor.value(v), default=repr)) for v in values
    ]


def test_a_secret_key_is_found_whatever_its_case_and_place() -> None:
    redactor = Redactor()
    fields = {"phone": {"to": "1380"}, "id_number": {"sensitive": True}}
    lines = [
        {"event": "change.planned", "fields": fields},
        {"event": "x", "nested": [{"PIN": 1234}]},
        {"event": "y", "to\u212aen": "t0k3n-value", "note": '"pin": 1'},
    ]
    shown = [orjson.loads(redactor.json(line, repr)) for line in lines]
    assert shown[0] == lines[0]
    assert shown[1]["nested"] == [{"PIN": REDACTED}]
    assert shown[2]["to\u212aen"] == REDACTED
    assert shown[2]["note"] == '"pin": 1'


def test_a_log_line_walks_what_orjson_shows_by_repr() -> None:
    """A mapping orjson cannot encode is shown by its repr, so it is walked first."""
    redactor = Redactor(["s3cret-lobby-pw"])
    line = redactor.json({"m": MappingProxyType({"password": "x", "n": "s3cret-lobby-pw"})}, repr)
    assert orjson.loads(line) == {"m": {"password": REDACTED, "n": REDACTED}}


def test_a_log_line_survives_an_integer_json_cannot_hold_in_64_bits() -> None:
    line = Redactor(["s3cret-lobby-pw"]).json({"n": 2**70, "e": "s3cret-lobby-pw"}, repr)
    assert orjson.loads(line) == {"n": 2**70, "e": REDACTED}


@given(
    st.sets(st.binary(max_size=4).map(lambda b: bytes(c % 3 + 97 for c in b)), max_size=8),
    st.lists(st.binary(max_size=5).map(lambda b: bytes(c % 4 + 96 for c in b)), max_size=20),
)
def test_the_factored_alternation_matches_exactly_its_words(
    words: set[bytes], probes: list[bytes]
) -> None:
    """`"ab":` and `"abc":` alike: words that are prefixes of others, the empty word, none."""
    pattern = re.compile(_alternation(words))
    for word in [*words, *probes]:
        assert (pattern.fullmatch(word) is not None) == (word in words), (words, word)


_FIELD_CHANGES = st.builds(
    FieldChange,
    field=_KEYS | st.text(max_size=4),
    old=_VALUES,
    new=_VALUES,
    sensitive=st.booleans(),
    write_only=st.booleans(),
)
_CHANGES = st.builds(
    Change,
    action=st.sampled_from(Action),
    person_id=st.text(max_size=4) | _SECRET_TEXT,
    reason=st.sampled_from(Reason),
    fields=st.lists(_FIELD_CHANGES, max_size=4).map(tuple),
    resync=st.booleans(),
)


@given(
    changes=st.lists(_CHANGES, max_size=5),
    context=st.dictionaries(_KEYS, _SCALARS, max_size=2),
)
def test_change_lines_show_what_the_walk_shows(
    changes: list[Change], context: dict[str, object]
) -> None:
    """Change documents skip the key search when their text opens no object but their own
    (logs.change_lines): what they show is still what walking each would, whatever the field
    names (secret keys, twice over) and values (objects holding secret keys, known secrets)."""
    redactor = Redactor(["s3cret-lobby-pw", 'quo"te-secret'])
    common = redactor.value(context)
    documents = [change_document(change) for change in changes]
    lines = [{**common, **document, "event": "change.applied"} for document in documents]
    text = redactor.lines(lines, repr, objects=sum(map(document_objects, documents)))
    assert [orjson.loads(line) for line in text.splitlines()] == [
        orjson.loads(orjson.dumps(redactor.value(line), default=repr)) for line in lines
    ]


@given(user=st.text(min_size=1), password=st.text(min_size=1), in_query=st.text(min_size=1))
def test_a_connection_urls_passwords_are_its_secrets_and_never_shown(
    user: str, password: str, in_query: str
) -> None:
    """Whatever a password holds (an "@", a "/", a "%"), percent-encoded or not: the store's
    and an HR database's URL show everything else as written."""
    for written in (quote(password, safe=""), quote(password, safe="@/:%")):
        url = (
            f"postgresql://{quote(user, safe='')}:{written}@db:5433/hr"
            f"?sslmode=require&password={quote(in_query, safe='')}"
        )
        assert url_shown(url) == (
            f"postgresql://{quote(user, safe='')}:***@db:5433/hr?sslmode=require&password=***"
        )
        assert {password, written, in_query} <= url_secrets(url)


def test_a_url_without_secrets_is_shown_as_written() -> None:
    for url in ("sqlite:////srv/hr.db", "postgresql:///hr?host=/run/pg", "postgresql://hr@db/hr"):
        assert url_shown(url) == url
        assert url_secrets(url) == frozenset()
