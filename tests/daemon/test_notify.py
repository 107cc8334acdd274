"""The systemd notify protocol: datagrams to $NOTIFY_SOCKET, path or abstract namespace."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from reconciler.daemon.notify import Notifier


def test_messages_reach_a_socket_path(tmp_path: Path) -> None:
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:
        manager.bind(path)
        Notifier({"NOTIFY_SOCKET": path}).send("READY=1", "STATUS=pass 1: ok")
        assert manager.recv(1024) == b"READY=1\nSTATUS=pass 1: ok"


def test_messages_reach_an_abstract_socket() -> None:
    name = f"reconciler-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:
        manager.bind("\0" + name)
        Notifier({"NOTIFY_SOCKET": "@" + name}).send("WATCHDOG=1")
        assert manager.recv(1024) == b"WATCHDOG=1"


def test_without_a_manager_nothing_is_sent_and_nothing_fails(tmp_path: Path) -> None:
    Notifier({}).send("READY=1")
    Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone")}).send("READY=1")  # logged, not raised


def test_the_watchdog_interval_is_half_the_timeout_and_only_for_this_process() -> None:
    assert Notifier({"WATCHDOG_USEC": "30000000"}).watchdog_interval == 15.0
    mine = {"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid())}
    assert Notifier(mine).watchdog_interval == 0.5
    assert Notifier({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}).watchdog_interval is None
    assert Notifier({}).watchdog_interval is None
