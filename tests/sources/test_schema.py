"""document_schema(): a JSON Schema of one desired-state file that editors can use."""

from __future__ import annotations

import json
from typing import Any

import yaml

from reconciler.sources.document import KINDS, TARGET_DEF, document_schema

EXAMPLE = """\
version: 1
targets:
  lobby-terminal:
    kind: nebula_pass
    url: https://10.0.0.21:8000
    password: ${LOBBY_PASSWORD}
    select: {types: [staff, visitor], groups: [hq]}
departments:
  - {id: HQ, name: Headquarters}
  - {id: D01, name: R&D, parent: HQ}
persons:
  - id: "1001"
    name: 张三
    type: staff
    job_number: "1001"
    email: zhangsan@example.com
    phone: "13800138000"
    department: D01
    groups: [hq]
    card: "1234"
    id_number: "110101199001011234"
    pin: "0000"
    admin: false
    remark: ""
    valid_from: "2026-11-01T09:00:00+08:00"
    valid_until: "2026-11-30T18:00:00+08:00"
    photo: photos/1001.jpg
    labels: {building: A}
    protected: false
"""


def resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    if ref is None:
        return node
    found: dict[str, Any] = schema["$defs"][ref.removeprefix("#/$defs/")]
    return found


def check_object(schema: dict[str, Any], node: dict[str, Any], value: dict[str, Any]) -> None:
    """The keywords this schema uses for objects: required, properties, additionalProperties."""
    node = resolve(schema, node)
    assert node["type"] == "object"
    assert set(node.get("required", ())) <= set(value)
    properties = node.get("properties", {})
    if node.get("additionalProperties") is False:
        assert set(value) <= set(properties), set(value) - set(properties)


def test_schema_is_json_draft_2020_12() -> None:
    schema = document_schema()
    assert json.loads(json.dumps(schema)) == schema
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["title"]
    assert schema["required"] == ["version"]
    assert schema["additionalProperties"] is False
    assert schema["properties"]["version"]["const"] == 1
    sources = schema["properties"]["persons_from"]
    assert sources["type"] == "array"
    assert schema["$defs"]["PersonsFrom"]["required"] == ["sql", "query"]


def test_targets_are_open_objects_with_a_kind() -> None:
    schema = document_schema()
    targets = schema["properties"]["targets"]
    assert targets["propertyNames"] == {"pattern": "^[a-z0-9][a-z0-9_-]*$"}
    assert targets["additionalProperties"] == {"$ref": f"#/$defs/{TARGET_DEF}"}
    target = schema["$defs"][TARGET_DEF]
    assert target["required"] == ["kind"]
    assert target["properties"]["kind"]["enum"] == list(KINDS)
    assert target["additionalProperties"] is True


def test_persons_and_departments_are_closed() -> None:
    schema = document_schema()
    person = resolve(schema, schema["properties"]["persons"]["items"])
    assert person["required"] == ["id", "name"]
    assert person["additionalProperties"] is False
    assert person["properties"]["type"]["enum"] == ["staff", "visitor", "blacklist", "vip"]
    assert person["properties"]["id"]["type"] == "string"
    assert person["properties"]["pin"]["type"] == "string"
    assert person["properties"]["admin"]["type"] == "boolean"
    department = resolve(schema, schema["properties"]["departments"]["items"])
    assert department["required"] == ["id", "name"]
    assert department["additionalProperties"] is False


def test_the_design_example_fits_the_schema() -> None:
    schema = document_schema()
    data = yaml.safe_load(EXAMPLE)
    check_object(schema, schema, data)
    for target in data["targets"].values():
        check_object(schema, schema["properties"]["targets"]["additionalProperties"], target)
        assert target["kind"] in schema["$defs"][TARGET_DEF]["properties"]["kind"]["enum"]
    for department in data["departments"]:
        check_object(schema, schema["properties"]["departments"]["items"], department)
    for person in data["persons"]:
        check_object(schema, schema["properties"]["persons"]["items"], person)


def test_a_misspelt_key_does_not_fit() -> None:
    schema = document_schema()
    person = resolve(schema, schema["properties"]["persons"]["items"])
    assert "emial" not in person["properties"]
