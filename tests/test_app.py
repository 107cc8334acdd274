"""Target settings are validated by their kind, with errors placed in the desired-state file."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import pytest

from reconciler import app, logs
from reconciler.errors import DesiredError
from reconciler.settings import Settings
from reconciler.sources.document import Kind
from reconciler.targets import KINDS

HEADER = "version: 1\ntargets:\n  lobby:\n    kind: {kind}\n"
GOOD = "    url: https://10.0.0.21:8000\n    username: admin\n    password: ${PW}\n"


def problems(tmp_path: Path, body: str, kind: str = "nebula_pass") -> list[str]:
    path = tmp_path / "desired.yaml"
    path.write_text(HEADER.format(kind=kind) + body + "persons: []\n", encoding="utf-8")
    with pytest.raises(DesiredError) as caught:
        app.validate(path, env={"PW": "pw-value-9931"})
    texts = [str(p).replace(str(path), "desired.yaml") for p in caught.value.problems]
    for text in texts:
        assert "pw-value-9931" not in text
    return texts


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            GOOD + "    usrname: x\n",
            "desired.yaml:8:5: target lobby: unknown key 'usrname' for kind "
            "nebula_pass (did you mean 'username'?)",
        ),
        (
            GOOD.replace("https://10.0.0.21:8000", "ftp://x"),
            "desired.yaml:5:10: target lobby: url: must be an http:// or https:// URL with a host",
        ),
        (
            GOOD.replace("    username: admin\n", ""),
            "desired.yaml:4:5: target lobby: username is required for kind nebula_pass",
        ),
        (
            GOOD + "    max_deletes: lots\n",
            "desired.yaml:8:18: target lobby: max_deletes: max_deletes must be a count like 10 "
            "or a percentage like 10%, not 'lots'",
        ),
        (
            GOOD + "    batch_size: 500\n",
            "desired.yaml:8:17: target lobby: batch_size: "
            "Input should be less than or equal to 100",
        ),
        (
            GOOD + "    prune: everything\n",
            "desired.yaml:8:12: target lobby: prune: Input should be 'managed' or 'none'",
        ),
    ],
)
def test_target_settings_errors(tmp_path: Path, body: str, expected: str) -> None:
    assert problems(tmp_path, body) == [expected]


def test_every_kind_the_file_format_names_is_available() -> None:
    assert set(KINDS) == set(get_args(Kind))


def test_an_unknown_kind_is_refused_where_it_is_written(tmp_path: Path) -> None:
    (text,) = problems(tmp_path, "    url: http://10.0.0.30:5555\n", kind="hikvision")
    assert text.startswith("desired.yaml:4:11: ")
    assert "nebula_pass" in text


def test_the_example_file_is_valid() -> None:
    root = Path(__file__).resolve().parents[1]
    env = {
        "LOBBY_PASSWORD": "a",
        "KIOSK_PASSWORD": "b",
        "SIGHT_SECRET": "c",
        "CMS_API_KEY": "d",
        "CMS_INITIAL_PASSWORD": "e",
    }
    validated = app.validate(root / "desired.example.yaml", env=env)
    assert {name: t.kind for name, t in validated.loaded.targets.items()} == {
        "lobby-terminal": "nebula_pass",
        "visitor-kiosk": "nebula_pass",
        "fog-box": "sophon_fog",
        "platform": "sophon_sight",
        "cms": "siteserver",
    }
    assert len(validated.loaded.desired.persons) == 5
    assert all(
        p.photo is None or Path(p.photo.path).is_file()
        for p in validated.loaded.desired.persons.values()
    )


def test_secrets_come_from_the_environment_then_systemd_credentials(tmp_path: Path) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "LOBBY_PASSWORD").write_text("from-credential\n")
    env = app.Environment({"CREDENTIALS_DIRECTORY": str(credentials), "OTHER": "from-env"})
    assert env.get("LOBBY_PASSWORD") == "from-credential"
    assert env.get("OTHER") == "from-env"
    assert env.get("MISSING") is None
    assert env.get("../etc/passwd") is None
    both = app.Environment({"CREDENTIALS_DIRECTORY": str(credentials), "LOBBY_PASSWORD": "env"})
    assert both.get("LOBBY_PASSWORD") == "env"


def test_a_database_password_joins_the_one_redaction_path(tmp_path: Path) -> None:
    path = tmp_path / "desired.yaml"
    path.write_text(
        "version: 1\npersons_from:\n  - {sql: '${HR}', query: SELECT 1}\n", encoding="utf-8"
    )
    password = "db-pw%2F7713"  # percent-encoded in the URL; libpq would echo it decoded
    validated = app.validate(path, env={"HR": f"postgresql://hr:{password}@db/hr"})
    assert not validated.loaded.complete  # validate alone never queries
    shown = logs.redact(f"an error quoting db-pw%2F7713 and db-pw/7713 {path}")
    assert "7713" not in shown
    assert str(path) in shown


async def test_the_state_dir_keeps_the_parsed_files_for_the_next_load(tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "10-targets.yaml").write_text(HEADER.format(kind="nebula_pass") + GOOD)
    (conf / "20-persons.yaml").write_text('version: 1\npersons:\n  - {id: "1", name: A}\n')
    settings = Settings(state_dir=tmp_path / "state", desired=conf)
    env = {"PW": "pw-value-9931"}
    # `validate` creates no state dir (a CI checkout of the desired state stays clean).
    assert app.parsed_cache(settings, conf, existing=True) is None
    assert app.validate(conf, env=env).loaded.parsed == (
        str(conf / "10-targets.yaml"),
        str(conf / "20-persons.yaml"),
    )
    assert not settings.state_dir.exists()

    async with app.open_app(settings, env=env) as opened:
        assert len(opened.desired.loaded.parsed) == 2
        assert opened.parsed is not None
        # The daemon's reload after an edit of one file parses that file only.
        (conf / "20-persons.yaml").write_text('version: 1\npersons:\n  - {id: "1", name: B}\n')
        reloaded = app.validate(conf, env=env, hasher=opened.hasher, cache=opened.parsed)
        assert reloaded.loaded.parsed == (str(conf / "20-persons.yaml"),)
        assert reloaded.loaded.desired.persons["1"].name == "B"
    cache = app.parsed_cache(settings, conf, existing=True)
    assert cache is not None
    assert app.validate(conf, env=env, cache=cache).loaded.parsed == ()
