"""The desired-state file format (DESIGN A1) as pydantic models of one file, and its JSON Schema.

Pure: validation (into the core's types) only, no I/O. Strict throughout, because YAML's implicit
typing silently turns `1001` into an int and `0123` into 83: a value of the wrong type is an
error, never coerced.
"""

from __future__ import annotations

import re
from datetime import date, datetime
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    StringConstraints,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
)
from pydantic_core import PydanticCustomError

from reconciler.core import durations, persons
from reconciler.core.persons import Origin, Photo

#: The target kinds this version speaks.
KINDS: tuple[str, ...] = ("nebula_pass", "sophon_fog", "sophon_sight", "siteserver")
#: Target names, as a regular expression usable both by pydantic and in JSON Schema.
TARGET_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]*$"
#: Where document_schema() keeps the schema of a target's value, for merging per-kind schemas.
TARGET_DEF = "Target"


def _config(
    *, extra: Literal["forbid", "allow"] = "forbid", title: str | None = None
) -> ConfigDict:
    return ConfigDict(
        extra=extra,
        strict=True,
        # The inputs may be secrets (target settings) or sensitive person data.
        hide_input_in_errors=True,
        use_attribute_docstrings=True,
        title=title,
    )


#: The error types of this module's validators: their messages continue a sentence that starts
#: with the field's name ("valid_until must be after valid_from").
OWN_ERROR_TYPES = frozenset(
    {
        "id_whitespace",
        "id_control",
        "email_format",
        "datetime_format",
        "datetime_date_only",
        "datetime_type",
        "datetime_naive",
        "valid_until_order",
        "version",
        "sql_url",
        "duration",
    }
)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+")
_EXAMPLE_TIME = "2026-11-01T09:00:00+08:00"
_PERSON_TYPES = {t.value: t for t in persons.PersonType}
#: The longest a persons_from query may be given: a pass waits for it.
MAX_SOURCE_TIMEOUT = 600.0
#: URL schemes of persons_from; postgres:// is libpq's alias of postgresql://.
SQL_SCHEMES = ("sqlite", "postgresql", "postgres")


def _check_id(value: str) -> str:
    if value != value.strip():
        raise PydanticCustomError("id_whitespace", "must not start or end with whitespace")
    if _CONTROL.search(value):
        raise PydanticCustomError("id_control", "must not contain control characters")
    return value


def _check_email(value: str) -> str:
    if value and not _EMAIL.fullmatch(value):
        raise PydanticCustomError("email_format", "must look like name@example.com")
    return value


def _aware_datetime(value: Any) -> datetime:
    # YAML timestamps arrive as datetime (or date) objects; quoted ones as ISO 8601 strings.
    parsed: datetime
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise PydanticCustomError(
                "datetime_format",
                "must be an ISO 8601 date and time with an offset, e.g. {example}",
                {"example": _EXAMPLE_TIME},
            ) from None
    elif isinstance(value, datetime):
        parsed = value
    else:
        if isinstance(value, date):
            raise PydanticCustomError(
                "datetime_date_only",
                "must have a time and an offset, not only a date, e.g. {example}",
                {"example": _EXAMPLE_TIME},
            )
        raise PydanticCustomError(
            "datetime_type",
            "must be a date and time with an offset, e.g. {example}",
            {"example": _EXAMPLE_TIME},
        )
    if parsed.utcoffset() is None:
        raise PydanticCustomError(
            "datetime_naive",
            "has no UTC offset: add one, e.g. {example}",
            {"example": _EXAMPLE_TIME},
        )
    return parsed


def _version(value: Any) -> int:
    # Literal[1] would accept True and 1.0 (they compare equal to 1), even in strict mode.
    if type(value) is not int or value != 1:
        raise PydanticCustomError("version", "must be 1")
    return 1


def _sql_url(value: str) -> str:
    # Never echo the value: a database URL may carry a password.
    scheme, separator, rest = value.partition("://")
    if not separator or scheme not in SQL_SCHEMES:
        raise PydanticCustomError(
            "sql_url", "must be a sqlite:///PATH or postgresql://USER@HOST/DATABASE URL"
        )
    try:
        urlsplit(value)  # what names the source in messages must be able to take it apart
    except ValueError:
        raise PydanticCustomError(
            "sql_url", "is not a valid URL (check the brackets around an IPv6 host)"
        ) from None
    if scheme == "sqlite" and (not rest.startswith("/") or rest == "/"):
        raise PydanticCustomError(
            "sql_url",
            "must be sqlite:///PATH: three slashes before a relative path, four before an "
            "absolute one",
        )
    return value


def _timeout(value: Any) -> float:
    """Seconds (a number), or a number with a unit: "500ms", "30s", "2m"."""
    found = durations.seconds(value)
    if found is None or not 0 < found <= MAX_SOURCE_TIMEOUT:
        raise PydanticCustomError(
            "duration", "must be a duration above 0 and at most 10m, e.g. 30s or 500ms"
        )
    return found


Id = Annotated[str, StringConstraints(min_length=1, max_length=128), AfterValidator(_check_id)]
Name = Annotated[str, StringConstraints(min_length=1, max_length=128)]
Email = Annotated[str, AfterValidator(_check_email)]
AwareDatetime = Annotated[
    datetime,
    PlainValidator(_aware_datetime),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]
Kind = Literal["nebula_pass", "sophon_fog", "sophon_sight", "siteserver"]
PersonTypeName = Literal["staff", "visitor", "blacklist", "vip"]
TargetName = Annotated[str, StringConstraints(pattern=TARGET_NAME_PATTERN)]


class Person(BaseModel):
    """One person. Quote every value that looks like a number: ids, pins, phones, cards."""

    model_config = _config()

    id: Id
    """The stable key on every target (user_id / identity_id / thirdId / userName)."""
    name: Name
    type: PersonTypeName = "staff"
    job_number: str = ""
    email: Email = ""
    phone: str = ""
    department: str = ""
    """The id of a department declared under departments (checked when any are declared)."""
    groups: list[str] = Field(default_factory=list)
    card: str = ""
    """IC card number."""
    id_number: str = ""
    """Sensitive: never printed in plans or logs."""
    pin: str = ""
    """Sensitive: never printed in plans or logs."""
    admin: bool = False
    remark: str = ""
    valid_from: AwareDatetime | None = None
    valid_until: AwareDatetime | None = None
    photo: Annotated[str, StringConstraints(min_length=1)] | None = None
    """A JPG or PNG file, relative to the file that names it."""
    labels: dict[str, str] = Field(default_factory=dict)
    """Free-form labels for select."""
    protected: bool = False
    """True: never deleted or replaced by reconciler."""

    def to_core(self, *, photo: Photo | None, origin: Origin) -> persons.Person:
        """The validated person as the core takes it (the photo already read)."""
        return persons.Person(
            id=self.id,
            name=self.name,
            type=_PERSON_TYPES[self.type],
            job_number=self.job_number,
            email=self.email,
            phone=self.phone,
            department=self.department,
            groups=tuple(self.groups),
            card=self.card,
            id_number=self.id_number,
            pin=self.pin,
            admin=self.admin,
            remark=self.remark,
            valid_from=self.valid_from,
            valid_until=self.valid_until,
            photo=photo,
            labels=self.labels,
            protected=self.protected,
            origin=origin,
        )

    @field_validator("valid_until")
    @classmethod
    def _after_valid_from(cls, value: datetime | None, info: ValidationInfo) -> datetime | None:
        start = info.data.get("valid_from")
        if value is not None and start is not None and value <= start:
            raise PydanticCustomError("valid_until_order", "must be after valid_from")
        return value


class Department(BaseModel):
    """A department; synced parents first where a kind has departments."""

    model_config = _config()

    id: Id
    name: Name
    parent: str = ""
    """The id of the parent department; empty for a top-level one."""


class PersonsFrom(BaseModel):
    """Persons read by a read-only SQL query, beside the persons declared inline."""

    model_config = _config()

    sql: Annotated[str, AfterValidator(_sql_url)]
    """sqlite:///PATH (relative to this file) or postgresql://USER@HOST/DATABASE; ${NAME}
    takes it from the environment."""
    query: Annotated[str, StringConstraints(min_length=1)]
    """One SELECT whose columns are named like person fields (id, name, email, ...)."""
    timeout: Annotated[
        float,
        PlainValidator(_timeout),
        WithJsonSchema(
            {
                "anyOf": [
                    {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_SOURCE_TIMEOUT},
                    {"type": "string", "pattern": durations.PATTERN.pattern},
                ]
            }
        ),
    ] = 30.0
    """How long the database may take to answer, in seconds or with a unit: 30s, 500ms, 2m."""


class Target(BaseModel):
    """One target: its kind, and settings that the kind's adapter validates."""

    # The only open model: a target's other keys belong to its kind and are checked there.
    model_config = _config(extra="allow")

    kind: Kind
    """The vendor API this target speaks."""


class Document(BaseModel):
    """One desired-state file."""

    model_config = _config(title="reconciler desired state")

    version: Annotated[
        int, PlainValidator(_version), WithJsonSchema({"type": "integer", "const": 1})
    ]
    """The format version: 1."""
    targets: dict[TargetName, Target] = Field(default_factory=dict)
    """Target name -> settings."""
    departments: list[Department] = Field(default_factory=list)
    persons: list[Person] = Field(default_factory=list)
    persons_from: list[PersonsFrom] = Field(default_factory=list)
    """SQL queries whose rows are more persons."""


def document_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of one desired-state file, for editors.

    A target's value is `$defs/Target`: an object with a required `kind` and any other keys, so
    that per-kind schemas can be merged in without touching the rest.
    """
    schema = Document.model_json_schema()
    # pydantic renders constrained dict keys as patternProperties, which lets any other name
    # through; propertyNames makes editors flag a bad target name.
    targets = schema["properties"]["targets"]
    targets.pop("patternProperties", None)
    targets["propertyNames"] = {"pattern": TARGET_NAME_PATTERN}
    targets["additionalProperties"] = {"$ref": f"#/$defs/{TARGET_DEF}"}
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}
