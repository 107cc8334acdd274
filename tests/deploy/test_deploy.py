"""deploy/: the systemd unit passes `systemd-analyze verify`, the Kubernetes manifests parse, probe
the right endpoints and carry a valid desired state, the PostgreSQL overlay makes two replicas of
them, the env example names every setting, and the Dockerfile runs as non-root with a health
check and a state volume. There is no Docker engine here, so the image cannot be built in tests:
the Dockerfile is checked as text, and its health check is run against the daemon's endpoints.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler import app
from reconciler.daemon.metrics import Metrics
from reconciler.daemon.server import make_app, start
from reconciler.daemon.status import Status
from reconciler.daemon.trigger import Trigger
from reconciler.settings import Settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
UNIT = DEPLOY / "systemd" / "reconciler.service"
ENV_EXAMPLE = DEPLOY / "systemd" / "reconciler.env.example"
DOCKERFILE = DEPLOY / "Dockerfile"
KUBERNETES = DEPLOY / "kubernetes"
BASE = KUBERNETES / "base"
OVERLAY = KUBERNETES / "postgres"
INSTALLED = "/opt/reconciler/bin/reconciler"


def installed(name: str, how: str) -> str:
    """The tool's path; CI must never skip, elsewhere a missing tool is a skip saying how to fix."""
    tool = shutil.which(name)
    if tool is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} is missing; CI must have it: {how}")
        pytest.skip(f"{name} is not installed: {how}")
    return tool


def systemd_analyze() -> str:
    return installed("systemd-analyze", "apt-get install systemd (.ci/run does)")


def verify(unit_text: str, tmp_path: Path) -> tuple[int, str]:
    """`systemd-analyze verify` of the unit, with ExecStart= pointing at this venv's console
    script (verify checks that the binary exists and is executable): exit code and output."""
    binary = Path(sys.prefix) / "bin" / "reconciler"
    assert os.access(binary, os.X_OK), f"{binary} is not installed"
    assert f"ExecStart={INSTALLED} " in unit_text
    unit = tmp_path / UNIT.name
    unit.write_text(unit_text.replace(f"ExecStart={INSTALLED} ", f"ExecStart={binary} "))
    done = subprocess.run(  # noqa: S603 (a fixed argument list, no shell)
        [systemd_analyze(), "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "SYSTEMD_LOG_COLOR": "0"},
    )
    return done.returncode, done.stdout + done.stderr


def service_settings() -> dict[str, list[str]]:
    """The [Service] section's assignments, by key (a key may repeat)."""
    settings: dict[str, list[str]] = {}
    section = ""
    for line in UNIT.read_text().splitlines():
        if line.startswith("["):
            section = line
        elif section == "[Service]" and line and not line.startswith("#"):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def kubernetes_files(folder: Path = BASE) -> list[Path]:
    return sorted(folder.glob("*.yaml"))


def manifests(folder: Path = BASE) -> dict[str, list[Any]]:
    return {
        path.name: list(yaml.safe_load_all(path.read_text())) for path in kubernetes_files(folder)
    }


def the(kind: str, folder: Path = BASE) -> dict[str, Any]:
    found = [doc for docs in manifests(folder).values() for doc in docs if doc["kind"] == kind]
    assert len(found) == 1, kind
    document: dict[str, Any] = found[0]
    return document


def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    code, output = verify(UNIT.read_text(), tmp_path)
    # Strict: not a line of output. Unknown or misspelt keys exit 0 with only a warning (see
    # the next test), so the exit code alone proves little. No filter is applied: on Debian 12
    # (systemd 252) verify prints nothing about other units for this one.
    assert code == 0, output
    assert output == "", output


def test_verify_reports_a_misspelt_directive(tmp_path: Path) -> None:
    """The check above has teeth: a typo in the unit shows up in verify's output."""
    code, output = verify(UNIT.read_text().replace("ProtectClock=", "ProtectClok="), tmp_path)
    assert code == 0
    assert "Unknown key 'ProtectClok'" in output


def test_the_unit_declares_the_daemon_contract_and_its_hardening() -> None:
    settings = service_settings()
    expected = {
        "Type": "notify",
        "NotifyAccess": "main",
        "ExecReload": "/bin/kill -HUP $MAINPID",
        "Restart": "on-failure",
        "StateDirectory": "reconciler",
        "ConfigurationDirectory": "reconciler",
        "ProtectSystem": "strict",
        "NoNewPrivileges": "yes",
        "CapabilityBoundingSet": "",
        "SystemCallFilter": "@system-service",
        "UMask": "0077",
    }
    for key, value in expected.items():
        assert settings.get(key) == [value], key
    assert "RECONCILER_STATE_DIR=/var/lib/reconciler" in settings["Environment"]
    assert "RECONCILER_DESIRED=/etc/reconciler/desired.yaml" in settings["Environment"]
    assert settings["User"] != ["root"]
    assert "WatchdogSec" in settings
    assert "EnvironmentFile" in settings


def test_every_kubernetes_manifest_parses() -> None:
    assert set(manifests(KUBERNETES)) == {"kustomization.yaml", "secret.example.yaml"}
    assert set(manifests(BASE)) == {
        "configmap.yaml",
        "deployment.yaml",
        "kustomization.yaml",
        "pvc.yaml",
        "service.yaml",
    }
    assert set(manifests(OVERLAY)) == {
        "deployment-patch.yaml",
        "kustomization.yaml",
        "poddisruptionbudget.yaml",
    }
    for folder in (KUBERNETES, BASE, OVERLAY):
        for name, documents in manifests(folder).items():
            assert documents, name
            for document in documents:
                assert isinstance(document, dict), name
                assert {"apiVersion", "kind"} <= document.keys(), name


def test_kustomization_lists_every_manifest_but_the_secret_example() -> None:
    listed = set(the("Kustomization")["resources"])
    assert listed == {p.name for p in kubernetes_files()} - {"kustomization.yaml"}
    # The default (one replica, SQLite) and the PostgreSQL overlay both build on the base.
    assert the("Kustomization", KUBERNETES)["resources"] == ["base"]
    overlay = the("Kustomization", OVERLAY)
    assert overlay["resources"] == ["../base", "poddisruptionbudget.yaml"]
    assert {"path": "deployment-patch.yaml"} in overlay["patches"]
    assert the("Kustomization", KUBERNETES)["images"] == overlay["images"]


def test_the_deployment_probes_healthz_and_readyz_and_keeps_one_writer() -> None:
    spec = the("Deployment")["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"]["type"] == "Recreate"
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": 9180}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": 9180}
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert env["RECONCILER_LISTEN"] == "0.0.0.0:9180"
    mounts = {mount["mountPath"]: mount for mount in container["volumeMounts"]}
    # A directory mount: with subPath the pod would never see ConfigMap updates.
    assert "subPath" not in mounts["/etc/reconciler"]
    assert "/var/lib/reconciler" in mounts
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"]["drop"] == ["ALL"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    # The same grace for the in-flight change as the systemd unit gives it.
    (stop,) = service_settings()["TimeoutStopSec"]
    assert pod["terminationGracePeriodSeconds"] == int(stop.removesuffix("s"))


def test_the_postgresql_overlay_runs_two_replicas_on_the_shared_store() -> None:
    patch = the("Deployment", OVERLAY)["spec"]
    assert patch["replicas"] == 2
    # Replicas never write one target at once: rolling updates are safe, and keep one running.
    assert patch["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
    }
    pod = patch["template"]["spec"]
    (container,) = pod["containers"]
    env = {item["name"]: item for item in container["env"]}
    assert env["RECONCILER_REPLICA_ID"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    (state,) = pod["volumes"]
    # The claim is removed from the volume (null deletes it in a strategic merge patch).
    assert state == {
        "name": "state",
        "persistentVolumeClaim": None,
        "emptyDir": {"sizeLimit": "64Mi"},
    }
    deleted = [
        yaml.safe_load(p["patch"]) for p in the("Kustomization", OVERLAY)["patches"] if "patch" in p
    ]
    assert deleted == [
        {
            "$patch": "delete",
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": the("PersistentVolumeClaim")["metadata"]["name"]},
        }
    ]
    budget = the("PodDisruptionBudget", OVERLAY)["spec"]
    assert budget["minAvailable"] == 1
    assert budget["selector"] == the("Deployment")["spec"]["selector"]
    # The Secret example says where the store URL goes (commented: the SQLite default must not
    # pick it up).
    assert (
        "# RECONCILER_STORE_URL: postgresql://" in (KUBERNETES / "secret.example.yaml").read_text()
    )


def test_kustomize_builds_both_variants() -> None:
    """With kubectl at hand, the overlay renders to what the patch says: two replicas, no claim."""
    kubectl = installed("kubectl", "install it as https://kubernetes.io/docs/tasks/tools/ says")
    built = {}
    for name, folder in (("sqlite", KUBERNETES), ("postgres", OVERLAY)):
        done = subprocess.run(  # noqa: S603 (a fixed argument list, no shell)
            [kubectl, "kustomize", str(folder)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        built[name] = {
            (d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(done.stdout)
        }
    assert ("PersistentVolumeClaim", "reconciler-state") in built["sqlite"]
    assert ("PersistentVolumeClaim", "reconciler-state") not in built["postgres"]
    sqlite, postgres = (built[n][("Deployment", "reconciler")] for n in ("sqlite", "postgres"))
    assert (sqlite["spec"]["replicas"], postgres["spec"]["replicas"]) == (1, 2)
    volumes = {v["name"]: v for v in postgres["spec"]["template"]["spec"]["volumes"]}
    assert volumes["state"] == {"name": "state", "emptyDir": {"sizeLimit": "64Mi"}}
    (container,) = postgres["spec"]["template"]["spec"]["containers"]
    names = [item["name"] for item in container["env"]]
    assert "RECONCILER_REPLICA_ID" in names
    assert "RECONCILER_LISTEN" in names  # merged into the base's list, not replacing it


def test_the_configmaps_desired_state_validates(tmp_path: Path) -> None:
    desired = tmp_path / "desired.yaml"
    desired.write_text(the("ConfigMap")["data"]["desired.yaml"])
    validated = app.validate(desired, env={"LOBBY_PASSWORD": "x"})
    assert [t.kind for t in validated.loaded.targets.values()] == ["nebula_pass"]


def test_the_env_example_names_every_setting() -> None:
    text = ENV_EXAMPLE.read_text()
    for name in Settings.model_fields:
        variable = f"RECONCILER_{name.upper()}"
        assert re.search(rf"^#?{variable}=", text, re.MULTILINE), variable
    assert "0600" in text


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [
        (keyword.upper(), rest.strip())
        for keyword, _, rest in (line.partition(" ") for line in lines)
        if keyword and not keyword.startswith("#")
    ]


def test_the_dockerfile_runs_as_non_root_with_a_healthcheck_and_a_state_volume() -> None:
    instructions = dockerfile_instructions()

    def arguments(keyword: str) -> list[str]:
        return [rest for name, rest in instructions if name == keyword]

    users = arguments("USER")
    assert users, "no USER"
    assert users[-1].split(":")[0] not in {"root", "0"}
    (healthcheck,) = arguments("HEALTHCHECK")
    assert "/healthz" in healthcheck
    assert "urllib" in healthcheck
    assert arguments("VOLUME") == ["/var/lib/reconciler"]
    assert arguments("EXPOSE") == ["9180"]
    assert arguments("ENTRYPOINT") == ['["reconciler"]']
    assert arguments("CMD") == ['["run"]']
    assert any("-c constraints.txt" in run for run in arguments("RUN"))
    (environment,) = (env for env in arguments("ENV") if "RECONCILER_" in env)
    for setting in (
        "RECONCILER_STATE_DIR=/var/lib/reconciler",
        "RECONCILER_DESIRED=/etc/reconciler/desired.yaml",
        "RECONCILER_LISTEN=0.0.0.0:9180",
        "RECONCILER_LOG_FORMAT=json",
    ):
        assert setting in environment.split(), setting


def healthcheck_command() -> list[str]:
    """The image's HEALTHCHECK command (exec form), with this interpreter as its python."""
    (healthcheck,) = [rest for name, rest in dockerfile_instructions() if name == "HEALTHCHECK"]
    command = json.loads(healthcheck.partition(" CMD ")[2])
    assert command[0] == "python"
    return [sys.executable, *command[1:]]


async def run_healthcheck(listen: str) -> int:
    process = await asyncio.create_subprocess_exec(
        *healthcheck_command(),
        env={"PATH": os.environ.get("PATH", ""), "RECONCILER_LISTEN": listen},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    return await asyncio.wait_for(process.wait(), timeout=20)


async def test_the_images_healthcheck_passes_on_the_daemons_healthz_and_fails_without_it() -> None:
    """The image cannot be built here (no Docker engine), but its health check is Python of its
    own: run as the image runs it, against the daemon's own endpoints on the port that
    RECONCILER_LISTEN names."""
    status, trigger, metrics = Status(interval=60.0, dry_run=False), Trigger(), Metrics()
    listening = await start(make_app(status, trigger, metrics, webhook_secret=None), "127.0.0.1:0")
    port = listening.url.rpartition(":")[2]
    try:
        assert await run_healthcheck(f"0.0.0.0:{port}") == 0
    finally:
        await listening.close()
    assert await run_healthcheck(f"0.0.0.0:{port}") != 0  # nothing listens there now
