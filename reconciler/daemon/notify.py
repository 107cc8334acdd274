"""systemd's notify protocol: READY=1, WATCHDOG=1, STOPPING=1 as datagrams to $NOTIFY_SOCKET.

The protocol is one datagram per message. The Python libraries for it are either unmaintained
(sdnotify, last released 2017) or need libsystemd's headers to build (systemd-python), so this is
the few lines it takes. Without NOTIFY_SOCKET (not under systemd) every call does nothing.
Socket I/O; never raises: a lost notification must not stop the daemon.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

import structlog

log = structlog.get_logger("reconciler.daemon")


class Notifier:
    """Sends state changes to the service manager."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        environ = os.environ if environ is None else environ
        address = environ.get("NOTIFY_SOCKET", "")
        # '@' names a socket in the abstract namespace, spelt with a leading NUL byte.
        self._address = "\0" + address[1:] if address.startswith("@") else address
        usec = environ.get("WATCHDOG_USEC", "")
        pid = environ.get("WATCHDOG_PID", "")
        watched = usec.isdigit() and (not pid or pid == str(os.getpid()))
        #: Seconds between WATCHDOG=1 pings (half the manager's timeout); None: not watched.
        self.watchdog_interval = int(usec) / 2_000_000 if watched and int(usec) > 0 else None

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    def send(self, *states: str) -> None:
        if not self._address:
            return
        message = "\n".join(states).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto(message, self._address)
        except OSError as exc:
            log.warning("notify.failed", states=list(states), error=str(exc))
