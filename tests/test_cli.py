"""The command line end to end: `python -m reconciler` as a subprocess, against a simulator
served by the test on loopback. Checks exit codes, output, and that no secret leaks anywhere."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

from reconciler.simulators.base import serve
from reconciler.simulators.nebula_pass import NebulaPassSimulator
from reconciler.simulators.siteserver import SiteServerSimulator
from reconciler.simulators.sophon_fog import SophonFogSimulator
from reconciler.simulators.sophon_sight import SophonSightSimulator
from reconciler.store.sqlite import SqliteStore
from tests import lobby
from tests.conftest import JPEG

PASSWORD = lobby.PASSWORD
SENSITIVE = ("110101199001011234", "7391")  # an id_number and a pin of the fixture
#: Generous: a subprocess start with imports takes about a second; this only bounds a hang.
TIMEOUT = 60


@dataclass
class Run:
    code: int
    out: str
    err: str


class Site:
    """A working directory with a desired.yaml, a state dir, and the reconciler command."""

    def __init__(self, root: Path, url: str) -> None:
        self.root = root
        self.url = url
        #: More environment for the command: the other kinds' secrets.
        self.env: dict[str, str] = {}
        (root / "photos").mkdir()
        (root / "photos" / "1001.jpg").write_bytes(JPEG + b"1001")
        (root / "photos" / "1001b.jpg").write_bytes(JPEG + b"1001b")

    def write(self, persons: str, *, extra_target: str = "", max_deletes: str = "10%") -> None:
        text = lobby.desired(self.url, persons, max_deletes=max_deletes, extra_target=extra_target)
        (self.root / "desired.yaml").write_text(text, encoding="utf-8")

    async def run(self, *args: str, stdin: bytes | None = None) -> Run:
        env = {
            **os.environ,
            "LOBBY_PASSWORD": PASSWORD,
            "RECONCILER_STATE_DIR": str(self.root / "state"),
            "RECONCILER_LOG_FORMAT": "json",
            **self.env,
        }
        env.pop("RECONCILER_DESIRED", None)
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "reconciler",
            *args,
            cwd=self.root,
            env=env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(stdin), TIMEOUT)
        assert process.returncode is not None
        return Run(process.returncode, out.decode(), err.decode())


PERSONS = """  - id: "1001"
    name: 张三
    id_number: "110101199001011234"
    pin: "7391"
    photo: photos/1001.jpg
  - id: "1002"
    name: 李四
    type: visitor
"""


#: A terminal on a port nothing listens on.
DEAD = """  dead:
    kind: nebula_pass
    url: http://127.0.0.1:9
    username: admin
    password: x
    timeout: 2
"""


@pytest.fixture
def site(tmp_path: Path, nebula_url: str) -> Site:
    return Site(tmp_path, nebula_url)


def leaks(secret: str, text: str) -> bool:
    """Whether `secret` is in `text`; a number only as a whole, since timestamps hold digits."""
    if secret.isdigit():
        return re.search(rf"(?<!\d){secret}(?!\d)", text) is not None
    return secret in text


def assert_no_secrets(*texts: str) -> None:
    for text in texts:
        for secret in (PASSWORD, *SENSITIVE):
            assert not leaks(secret, text), f"{secret!r} leaked"


async def test_validate_and_schema(site: Site) -> None:
    site.write(PERSONS)
    run = await site.run("validate")
    assert run.code == 0, run.err
    assert "valid: 2 persons" in run.out
    schema = await site.run("schema")
    assert schema.code == 0
    document = orjson.loads(schema.out)
    assert "Target_nebula_pass" in document["$defs"]


async def test_plan_apply_converge_and_detailed_exit_codes(
    site: Site, nebula: NebulaPassSimulator
) -> None:
    site.write(PERSONS)
    first = await site.run("plan", "--detailed-exitcode")
    assert first.code == 2, first.err
    assert "+ 1001" in first.out
    assert "+ 1002" in first.out
    assert "Plan: 2 to create" in first.out
    assert nebula.log.writes() == 0  # plan changes nothing

    applied = await site.run("apply", "--yes")
    assert applied.code == 0, applied.err
    assert set(nebula.users) == {"1001", "1002"}
    lines = [orjson.loads(line) for line in applied.err.splitlines() if line.startswith("{")]
    events = [line["event"] for line in lines]
    assert events.index("plan.computed") < events.index("change.applied")
    assert events.count("change.applied") == 2
    # Each change is logged once, by its outcome, with its plan document entry.
    assert "change.planned" not in events
    outcome = next(line for line in lines if line.get("person") == "1002")
    assert outcome["event"] == "change.applied"
    assert (outcome["action"], outcome["reason"], outcome["target"]) == ("create", "new", "lobby")
    assert outcome["fields"]["name"] == {"from": None, "to": "李四"}

    converged = await site.run("plan", "--detailed-exitcode")
    assert converged.code == 0, converged.err
    assert "No changes." in converged.out

    site.write(PERSONS.replace("李四", "李四四"))
    edited = await site.run("plan", "--detailed-exitcode")
    assert edited.code == 2
    assert "~ 1002" in edited.out
    assert '"李四" → "李四四"' in edited.out
    assert_no_secrets(first.out, first.err, applied.out, applied.err, edited.out, edited.err)


async def test_a_type_change_shows_as_replace(site: Site) -> None:
    site.write(PERSONS)
    assert (await site.run("apply", "--yes")).code == 0
    site.write(PERSONS.replace("type: visitor", "type: staff"))
    run = await site.run("plan", "--json")
    document = orjson.loads(run.out)
    (change,) = document["targets"]["lobby"]["changes"]
    assert (change["action"], change["person"], change["reason"]) == (
        "replace",
        "1002",
        "immutable",
    )
    assert change["fields"] == {"type": {"from": 2, "to": 1}}
    text = await site.run("plan")
    assert "-/+ 1002" in text.out


async def test_an_invalid_desired_state_exits_1_with_file_line_and_changes_nothing(
    site: Site, nebula: NebulaPassSimulator
) -> None:
    site.write(PERSONS)
    assert (await site.run("apply", "--yes")).code == 0
    users = orjson.dumps(nebula.users)
    ledger = ledger_rows(site)
    nebula.log.clear()

    site.write(
        PERSONS.replace("李四", "李四四") + '  - id: "1003"\n    name: x\n    emial: a@b.c\n'
    )
    for command in (["validate"], ["plan"], ["apply", "--yes"]):
        run = await site.run(*command)
        assert run.code == 1
        # line 22: the header takes 11 lines, the persons before 1003 ten more.
        assert "desired.yaml:22:5: person 1003: unknown key 'emial'" in run.err, run.err
    assert nebula.log.count() == 0  # no target was even contacted
    assert orjson.dumps(nebula.users) == users
    assert ledger_rows(site) == ledger


def ledger_rows(site: Site) -> list[tuple[str, ...]]:
    import sqlite3

    with sqlite3.connect(site.root / "state" / "reconciler.sqlite3") as db:
        return db.execute(
            "SELECT target, person_id, fingerprint FROM ledger ORDER BY 1, 2"
        ).fetchall()


async def test_apply_without_a_terminal_needs_yes(site: Site, nebula: NebulaPassSimulator) -> None:
    site.write(PERSONS)
    run = await site.run("apply")
    assert run.code == 64
    assert "--yes" in run.err
    assert nebula.log.writes() == 0


async def test_a_saved_plan_is_applied_exactly_or_refused_when_stale(
    site: Site, nebula: NebulaPassSimulator
) -> None:
    site.write(PERSONS)
    saved = await site.run("plan", "--out", "plan.json")
    assert saved.code == 0
    document = (site.root / "plan.json").read_text(encoding="utf-8")
    assert_no_secrets(document)

    nebula.users.clear()  # nothing changed: still fresh
    applied = await site.run("apply", "plan.json", "--yes")
    assert applied.code == 0, applied.err
    assert set(nebula.users) == {"1001", "1002"}

    again = await site.run("plan", "--out", "plan2.json")
    assert again.code == 0
    nebula.edit_user("1002", name="edited on the device")
    nebula.log.clear()
    stale = await site.run("apply", "plan2.json", "--yes")
    assert stale.code == 1
    assert "stale" in stale.err
    assert "target lobby changed" in stale.err
    assert nebula.log.writes() == 0


async def test_mass_deletes_are_held_with_exit_3_until_released(
    site: Site, nebula: NebulaPassSimulator
) -> None:
    persons = "".join(f'  - id: "{n}"\n    name: p{n}\n' for n in range(2000, 2010))
    site.write(persons, max_deletes="3")
    assert (await site.run("apply", "--yes")).code == 0
    site.write('  - id: "2000"\n    name: p2000\n', max_deletes="3")
    held = await site.run("apply", "--yes")
    assert held.code == 3, held.err
    assert "9 deletes exceed max_deletes 3" in held.out
    assert len(nebula.users) == 10
    released = await site.run("apply", "--yes", "--allow-mass-delete")
    assert released.code == 0, released.err
    assert set(nebula.users) == {"2000"}


async def test_an_unreachable_target_exits_1_and_the_others_are_still_applied(
    site: Site, nebula: NebulaPassSimulator
) -> None:
    site.write(PERSONS, extra_target=DEAD)
    run = await site.run("apply", "--yes")
    assert run.code == 1
    assert "dead" in run.out
    assert "could not be observed" in run.out
    assert set(nebula.users) == {"1001", "1002"}


async def test_status_shows_each_target_its_failures_and_quarantine(
    site: Site, nebula: NebulaPassSimulator
) -> None:
    nothing = await site.run("status")
    assert nothing.code == 0, nothing.err
    assert "nothing has been applied yet" in nothing.out
    assert not (site.root / "state" / "reconciler.sqlite3").exists()  # status creates nothing

    site.write(PERSONS, extra_target=DEAD)
    assert (await site.run("apply", "--yes")).code == 1
    shown = await site.run("status")
    assert shown.code == 0, shown.err
    assert "lobby (nebula_pass)" in shown.out
    assert "managed 2" in shown.out.split("lobby (nebula_pass)")[1]
    assert "failing for 1 passes in a row" in shown.out.split("lobby")[0]
    # Two more failing passes quarantine it (tests/reliability/test_quarantine.py); here the
    # store is given that record directly, to see how status shows it.
    store = await SqliteStore.open(site.root / "state" / "reconciler.sqlite3")
    try:
        failing = (await store.health())["dead"]
        quarantined = dataclasses.replace(
            failing, failing_passes=3, until=time.time() + 300, quarantines=1
        )
        await store.record_health("dead", quarantined)
    finally:
        await store.aclose()
    shown = await site.run("status")
    assert "failing for 3 passes in a row" in shown.out
    assert "quarantined until" in shown.out
    document = orjson.loads((await site.run("status", "--json")).out)
    assert document["targets"]["lobby"]["health"] is None
    assert document["targets"]["lobby"]["last_pass"]["planned"] == {"create": 2}
    assert document["targets"]["dead"]["health"]["quarantined"] is True
    assert document["targets"]["dead"]["last_pass"]["error"]
    plan = await site.run("plan")
    assert "quarantined until" in plan.out  # an operator sees it, and plan still tries


async def test_apply_keeps_the_ledger_even_when_nothing_is_to_change(
    site: Site, nebula: NebulaPassSimulator
) -> None:
    """A person removed by hand on the device and from the desired state: no change to make,
    but the ledger must forget it, or it would be re-created as owned one day."""
    site.write(PERSONS)
    assert (await site.run("apply", "--yes")).code == 0
    del nebula.users["1002"]
    site.write(PERSONS.split('  - id: "1002"')[0])
    run = await site.run("apply", "--yes")
    assert run.code == 0, run.err
    assert "No changes." in run.out
    assert [row[1] for row in ledger_rows(site)] == ["1001"]
    assert nebula.log.writes() == 1  # the first apply's one batch; nothing since


async def test_secrets_and_sensitive_values_appear_nowhere(
    site: Site, nebula: NebulaPassSimulator
) -> None:
    site.write(PERSONS)
    outputs = [await site.run("apply", "--yes")]
    site.write(PERSONS.replace("7391", "8642").replace("photos/1001.jpg", "photos/1001b.jpg"))
    outputs.append(await site.run("plan", "--json", "--out", "state/plan.json"))
    outputs.append(await site.run("apply", "--yes"))
    assert nebula.users["1001"]["pin"] == "8642"
    texts = [t for run in outputs for t in (run.out, run.err)]
    texts += [
        p.read_bytes().decode("latin-1") for p in (site.root / "state").rglob("*") if p.is_file()
    ]
    assert_no_secrets(*texts)
    for text in texts:
        assert not leaks("8642", text)


async def test_a_device_echoing_the_password_back_is_redacted_everywhere(site: Site) -> None:
    """A device whose error page repeats the request it refused: the one redaction path keeps
    the password out of the CLI's output, the logs, the store and `status`."""
    from aiohttp import web

    async def echo_login(request: web.Request) -> web.Response:
        # An HTML error page quoting the form: not JSON, so the adapter quotes its start.
        sent = (await request.read()).decode()
        return web.Response(text=f"<p>login refused: {sent}</p>", content_type="text/html")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo_login)
    runner = web.AppRunner(app)
    await runner.setup()
    listening = web.TCPSite(runner, "127.0.0.1", 0)
    await listening.start()
    try:
        port = runner.addresses[0][1]
        site.url = f"http://127.0.0.1:{port}"
        site.write(PERSONS)
        runs = [await site.run("apply", "--yes"), await site.run("status", "--json")]
        runs.append(await site.run("status"))
    finally:
        await runner.cleanup()
    assert runs[0].code == 1
    texts = [t for run in runs for t in (run.out, run.err)]
    texts += [
        p.read_bytes().decode("latin-1") for p in (site.root / "state").rglob("*") if p.is_file()
    ]
    assert any("login refused" in text and "[redacted]" in text for text in texts), runs[0]
    assert_no_secrets(*texts)


async def test_every_kind_end_to_end_without_a_secret_anywhere(site: Site) -> None:
    """All four kinds through the real CLI: converge, then grep every output and file."""
    secrets = {
        "SIGHT_SECRET": "sight-secret-5521",
        "CMS_API_KEY": "cms-key-7781",
        "CMS_PASSWORD": "Initial-pw-4409",
    }
    site.env = secrets
    fog = SophonFogSimulator()
    sight = SophonSightSimulator(appkey="ak", secret=secrets["SIGHT_SECRET"])
    cms = SiteServerSimulator(api_key=secrets["CMS_API_KEY"])
    async with await serve(fog) as f, await serve(sight) as p, await serve(cms) as c:
        targets = f"""  fog:
    kind: sophon_fog
    url: {f.url}
    rate_limit: null
  platform:
    kind: sophon_sight
    url: {p.url}
    appkey: ak
    secret: ${{SIGHT_SECRET}}
    default_department: HQ
    rate_limit: null
  cms:
    kind: siteserver
    url: {c.url}
    api_key: ${{CMS_API_KEY}}
    initial_password: ${{CMS_PASSWORD}}
    rate_limit: null
departments:
  - {{id: HQ, name: Headquarters}}"""
        site.write(
            PERSONS.replace("type: visitor", "email: lisi@example.com"), extra_target=targets
        )
        outputs = [await site.run("apply", "--yes")]
        assert outputs[0].code == 0, outputs[0].out + outputs[0].err
        outputs.append(await site.run("plan", "--detailed-exitcode", "--out", "state/plan.json"))
        assert outputs[1].code == 0, outputs[1].out
        assert "No changes." in outputs[1].out

    assert set(fog.person_names()) == set(sight.person_names()) == {"1001", "1002"}
    assert set(cms.person_names()) == {"1001", "1002"}
    texts = [t for run in outputs for t in (run.out, run.err)]
    texts += [
        p.read_bytes().decode("latin-1") for p in (site.root / "state").rglob("*") if p.is_file()
    ]
    assert_no_secrets(*texts)
    for text in texts:
        for secret in secrets.values():
            assert secret not in text, f"{secret!r} leaked"


async def test_adopt_takes_only_declared_foreign_persons_and_then_owns_them(
    site: Site, nebula: NebulaPassSimulator
) -> None:
    nebula.add_user("1002", name="enrolled by hand", type=2)
    nebula.add_user("9001", name="nobody declares me")
    site.write(PERSONS)
    before = await site.run("plan")
    assert "2 foreign persons" in before.out
    assert "+ 1002" not in before.out  # a foreign person is never touched, even when desired

    refused = await site.run("adopt", "--target", "lobby")
    assert refused.code == 64  # no terminal and no --yes

    run = await site.run("adopt", "--target", "lobby", "--yes")
    assert run.code == 0, run.err
    assert "+ 1002  adopt" in run.out
    assert "left alone: 9001" in run.out
    assert "Adopted 1 person(s)" in run.out

    after = await site.run("plan")
    assert "~ 1002  update (intent)" in after.out  # brought to its desired state
    assert "1 foreign person on the target" in after.out
    assert (await site.run("apply", "--yes")).code == 0
    assert nebula.users["1002"]["name"] == "李四"

    site.write(PERSONS.split('  - id: "1002"')[0])  # 1002 leaves the desired state
    assert (await site.run("apply", "--yes")).code == 0
    assert set(nebula.users) == {"1001", "9001"}  # owned now, so deleted; 9001 untouched


async def test_usage_errors_exit_64(site: Site) -> None:
    site.write(PERSONS)
    assert (await site.run("plan", "--no-such-flag")).code == 64
    unknown = await site.run("--target", "nope", "plan")
    assert unknown.code == 64
    assert "no target named nope" in unknown.err
    untargeted = await site.run("adopt", "--yes")
    assert untargeted.code == 64
    assert "adopt needs --target" in untargeted.err


async def test_the_common_options_are_taken_after_the_command_too(
    site: Site, nebula: NebulaPassSimulator
) -> None:
    site.write(PERSONS)
    unknown = await site.run("plan", "--target", "nope")
    assert unknown.code == 64
    assert "no target named nope" in unknown.err

    def planned(run: Run) -> list[str]:
        assert run.code == 2, run.err
        document = orjson.loads(run.out)
        return [c["person"] for c in document["targets"]["lobby"]["changes"]]

    json = ("plan", "--json", "--detailed-exitcode")
    assert planned(await site.run(*json, "--only", "1002")) == ["1002"]
    # Before and after the command: persons add up, as targets do.
    assert planned(await site.run("--only", "1001", *json, "--only", "1002")) == ["1001", "1002"]
    # A file after the command replaces the one before it.
    elsewhere = site.root / "elsewhere"
    elsewhere.mkdir()
    for name in ("desired.yaml", "photos"):
        (site.root / name).rename(elsewhere / name)
    assert planned(await site.run("-f", "missing.yaml", *json, "-f", "elsewhere")) == [
        "1001",
        "1002",
    ]
    assert nebula.log.writes() == 0
    console = await site.run("apply", "--yes", "-f", "elsewhere", "--log-format", "console")
    assert console.code == 0, console.err
    assert "plan.computed" in console.err
    assert not console.err.lstrip().startswith("{")  # the environment asks for JSON
    assert set(nebula.users) == {"1001", "1002"}


async def test_demo_converges(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[1]
    (tmp_path / "deploy").mkdir()
    (tmp_path / "desired.example.yaml").write_bytes((root / "desired.example.yaml").read_bytes())
    import shutil

    shutil.copytree(root / "deploy" / "demo", tmp_path / "deploy" / "demo")
    site = Site.__new__(Site)
    site.root = tmp_path
    site.env = {}
    run = await site.run("demo")
    assert run.code == 0, run.err
    # Four kinds: two terminals, a face box, the platform (with 3 departments) and the CMS.
    assert (
        "Plan: 16 to create, 0 to update, 0 to replace, 0 to delete. 3 department changes."
        in run.out
    )
    for kind in ("nebula_pass", "sophon_fog", "sophon_sight", "siteserver"):
        assert f"({kind})" in run.out
    assert run.out.rstrip().count("No changes.") == 1
    assert "type vip is not supported" in run.out
    assert "foreign" in run.out


def converse(command: list[str], cwd: Path, env: dict[str, str], answer: bytes) -> tuple[int, str]:
    """Run a command on a pseudo-terminal, answer its question, return (exit code, screen)."""
    import pty
    import select
    import subprocess
    import time

    leader, follower = pty.openpty()
    process = subprocess.Popen(  # noqa: S603 (our own interpreter and module)
        command, cwd=cwd, env=env, stdin=follower, stdout=follower, stderr=follower
    )
    os.close(follower)
    screen = b""
    answered = False
    deadline = time.monotonic() + TIMEOUT
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(leader, 4096)
                except OSError:  # the terminal closed: the process is gone
                    break
                if not chunk:
                    break
                screen += chunk
            if not answered and b"Apply these changes?" in screen:
                os.write(leader, answer)
                answered = True
            if process.poll() is not None and not ready:
                break
        return process.wait(timeout=TIMEOUT), screen.decode(errors="replace")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(leader)


@pytest.mark.parametrize(("answer", "code", "created"), [(b"y\n", 0, 2), (b"n\n", 1, 0)])
async def test_apply_on_a_terminal_asks_first(
    site: Site, nebula: NebulaPassSimulator, answer: bytes, code: int, created: int
) -> None:
    site.write(PERSONS)
    env = {
        **os.environ,
        "LOBBY_PASSWORD": PASSWORD,
        "RECONCILER_STATE_DIR": str(site.root / "state"),
    }
    command = [sys.executable, "-m", "reconciler", "--log-format", "json", "apply"]
    result, screen = await asyncio.to_thread(converse, command, site.root, env, answer)
    assert "Apply these changes?" in screen
    assert result == code, screen
    assert len(nebula.users) == created
    if not created:
        assert "nothing was changed" in screen


async def test_simulate_serves_until_terminated(tmp_path: Path) -> None:
    import signal

    import aiohttp

    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "reconciler",
        "simulate",
        "--port",
        "0",
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), TIMEOUT)).decode()
        assert line.startswith("nebula_pass: http://127.0.0.1:"), line
        url = line.split()[1]
        async with aiohttp.ClientSession() as session, session.get(f"{url}/v2/datasync/ping") as r:
            assert (await r.json())["code"] == 200
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), TIMEOUT) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
