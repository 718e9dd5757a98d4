"""
systemd integration without systemd as PID 1 (it is not, on this machine):
the unit file is checked by ``systemd-analyze``, and the sd_notify protocol
by listening on a real NOTIFY_SOCKET, as systemd would.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time

import pytest

from tests.daemon.conftest import ROOT

UNIT = ROOT / "systemd" / "livemon-daemon.service"


def analyze() -> str:
    """Path of systemd-analyze (installed by .ci/run where missing)."""
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.fail("systemd-analyze is missing: apt-get install systemd")
    return path


@pytest.fixture
def unit_here(tmp_path) -> pathlib.Path:
    """The unit file with ExecStart pointing at this venv's command."""
    command = pathlib.Path(sys.executable).parent / "livemon-daemon"
    assert command.exists(), "install the project (pip install -e .)"
    text = UNIT.read_text().replace(
        "/usr/local/bin/livemon-daemon", str(command)
    )
    path = tmp_path / "livemon-daemon.service"
    path.write_text(text)
    return path


class TestUnitFile:
    def test_verify(self, unit_here):
        """systemd-analyze verify finds nothing wrong."""
        result = subprocess.run(
            [analyze(), "verify", "--man=no", str(unit_here)],
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, result.stderr
        assert result.stderr.strip() == ""

    def test_hardening_score(self, unit_here):
        """The exposure score stays low (0-100 scale, 10 is 'SAFE' 1.0)."""
        result = subprocess.run(
            [
                analyze(),
                "security",
                "--offline=yes",
                "--threshold=10",
                str(unit_here),
            ],
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, result.stdout[-500:]

    def test_every_directive_is_commented(self):
        """Each group of [Service] directives starts with its comment."""
        lines = UNIT.read_text().splitlines()
        service = lines[
            lines.index("[Service]") + 1 : lines.index("[Install]")
        ]
        for i, line in enumerate(service):
            if not line or line.startswith("#"):
                continue
            above = i - 1
            while (
                above >= 0
                and service[above]
                and not (service[above].startswith("#"))
            ):
                above -= 1
            assert above >= 0 and service[above].startswith("#"), line

    def test_keeps_the_ring_alive(self):
        """RemoveIPC and DynamicUser would delete the coordinators' ring."""
        text = UNIT.read_text()
        assert "RemoveIPC=no" in text
        assert "DynamicUser=yes" not in text
        assert "Type=notify" in text and "Restart=on-failure" in text


def listen(address: str) -> socket.socket:
    """Bind a datagram socket like systemd's, with sender credentials."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    sock.bind("\0" + address[1:] if address.startswith("@") else address)
    sock.settimeout(10)
    return sock


def receive(sock: socket.socket) -> tuple[dict[str, str], int]:
    """One notification as KEY -> value, and the sender's pid."""
    data, ancillary, _, _ = sock.recvmsg(4096, socket.CMSG_SPACE(12))
    pid = -1
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            pid = struct.unpack("iII", payload[:12])[0]
    pairs = dict(line.split("=", 1) for line in data.decode().splitlines())
    return pairs, pid


class TestNotify:
    @pytest.mark.parametrize("kind", ["path", "abstract"])
    def test_ready_status_watchdog_stopping(
        self, start_daemon, daemon_env, tmp_path, kind
    ):
        """READY=1 after opening, STATUS=, WATCHDOG=1, then STOPPING=1."""
        address = (
            str(tmp_path / "notify")
            if kind == "path"
            else f"@livemon-test-{os.getpid()}-{time.monotonic_ns()}"
        )
        sock = listen(address)
        env = dict(daemon_env, NOTIFY_SOCKET=address, WATCHDOG_USEC="200000")
        daemon = start_daemon(env=env, wait_ready=False)
        seen: dict[str, list[str]] = {}
        try:
            deadline = time.monotonic() + 20
            while "WATCHDOG" not in seen or "STATUS" not in seen:
                assert time.monotonic() < deadline, seen
                pairs, pid = receive(sock)
                assert pid == daemon.process.pid
                for key, value in pairs.items():
                    seen.setdefault(key, []).append(value)
            assert seen["READY"] == ["1"]
            assert seen["MAINPID"] == [str(daemon.process.pid)]
            assert any("drained" in s for s in seen["STATUS"])
            daemon.process.send_signal(signal.SIGTERM)
            while "STOPPING" not in seen:
                pairs, _ = receive(sock)
                for key, value in pairs.items():
                    seen.setdefault(key, []).append(value)
            assert daemon.process.wait(timeout=30) == 0
        finally:
            sock.close()
