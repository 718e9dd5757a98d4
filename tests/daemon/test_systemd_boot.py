"""
The shipped unit under real systemd (252) as PID 1, booted in an nspawn
container over an overlay of this machine's root (notes/systemd.md):
start, stop with the final drain, SIGKILL and SIGSTOP (watchdog) restarts,
coordinators before and after the daemon.  Run with ``-m systemd``, as
root, with systemd-container installed at the systemd version.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

import pytest

from tests.daemon.conftest import ROOT

pytestmark = pytest.mark.systemd

UNIT = ROOT / "systemd" / "livemon-daemon.service"
SYSUSERS = ROOT / "systemd" / "livemon.sysusers.conf"
SRC, SITE = "/opt/livemon-src", "/opt/livemon-site"
TEST_UNIT = f"""\
[Unit]
Description=livemon end-to-end checks under systemd
After=systemd-sysusers.service

[Service]
Type=oneshot
Environment=PYTHONUNBUFFERED=1
ExecStart=/opt/lmvenv/bin/python {SRC}/tests/daemon/container_check.py \
/opt/out/result.json
StandardOutput=append:/opt/out/check.log
StandardError=append:/opt/out/check.log
"""
# The daemon pings every WatchdogSec/2: 30 s would make the SIGSTOP check
# take a minute.
WATCHDOG_DROP_IN = "[Service]\nWatchdogSec=6s\n"


def venv_site() -> str:
    """This venv's site-packages (numpy, click, psutil, the editable
    livemon), bound read-only into the container."""
    venv = pathlib.Path(sys.prefix)
    return str(next(venv.glob("lib/python3*/site-packages")))


def outside_home_python() -> str:
    """An interpreter ProtectHome=yes does not hide (notes/systemd.md)."""
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.path.exists(candidate) and not os.path.realpath(
            candidate
        ).startswith(("/root", "/home")):
            return candidate
    pytest.fail("no python3 outside /root and /home: install python3")


def run(*args: str, **kwargs) -> subprocess.CompletedProcess[str]:
    """Run a command on the host; fail the test if it fails."""
    return subprocess.run(args, check=True, text=True, **kwargs)


def prepare(merged: pathlib.Path) -> None:
    """Install the unit, its drop-in, the test unit, users and a venv."""
    python = outside_home_python()
    run(python, "-m", "venv", "--without-pip", str(merged / "opt/lmvenv"))
    site = next((merged / "opt/lmvenv/lib").glob("python3*/site-packages"))
    (site / "livemon-src.pth").write_text(
        f"{SRC}\nimport site; site.addsitedir({SITE!r})\n"
    )
    for command, module in (
        ("livemon-daemon", "daemon"),
        ("livemon", "livemon"),
    ):
        script = merged / "usr/local/bin" / command
        script.parent.mkdir(parents=True, exist_ok=True)
        script.write_text(
            f"#!/opt/lmvenv/bin/python\nimport runpy\n"
            f"runpy.run_module({module!r}, run_name='__main__')\n"
        )
        script.chmod(0o755)
    units = merged / "etc/systemd/system"
    shutil.copy(UNIT, units / "livemon-daemon.service")
    (units / "livemon-daemon.service.d").mkdir(exist_ok=True)
    (units / "livemon-daemon.service.d/watchdog.conf").write_text(
        WATCHDOG_DROP_IN
    )
    (units / "livemon-test.service").write_text(TEST_UNIT)
    sysusers = merged / "usr/lib/sysusers.d"
    sysusers.mkdir(parents=True, exist_ok=True)
    shutil.copy(SYSUSERS, sysusers / "livemon.conf")
    # What the host's state would add: no database, no ring, no user.
    shutil.rmtree(merged / "var/lib/livemon", ignore_errors=True)


def test_shipped_unit_under_real_systemd(tmp_path):
    """Every check of container_check.py passes; timings are printed."""
    nspawn = shutil.which("systemd-nspawn")
    if os.geteuid() != 0 or nspawn is None:
        pytest.fail(
            "needs root and systemd-nspawn: apt-get install "
            "systemd-container=$(dpkg-query -W -f='${Version}' systemd)"
        )
    started = time.monotonic()
    ovl = tmp_path / "ovl"
    out = tmp_path / "out"
    ovl.mkdir()
    out.mkdir()
    run("mount", "-t", "tmpfs", "-o", "size=2g", "tmpfs", str(ovl))
    try:
        for name in ("upper", "work", "merged"):
            (ovl / name).mkdir()
        run(
            "mount",
            "-t",
            "overlay",
            "overlay",
            "-o",
            f"lowerdir=/,upperdir={ovl}/upper,workdir={ovl}/work",
            str(ovl / "merged"),
        )
        try:
            prepare(ovl / "merged")
            boot = subprocess.run(
                [
                    nspawn,
                    "-D",
                    str(ovl / "merged"),
                    "--register=no",
                    "--keep-unit",
                    "--quiet",
                    f"--bind={out}:/opt/out",
                    f"--bind-ro={ROOT}:{SRC}",
                    f"--bind-ro={venv_site()}:{SITE}",
                    "-b",
                    "systemd.unit=livemon-test.service",
                ],
                capture_output=True,
                text=True,
                timeout=300,
            )
        finally:
            subprocess.run(["umount", str(ovl / "merged")], check=False)
    finally:
        subprocess.run(["umount", "-l", str(ovl)], check=False)
    wall_s = time.monotonic() - started
    log = (
        (out / "check.log").read_text() if (out / "check.log").exists() else ""
    )
    assert (out / "result.json").exists(), (boot.stdout[-3000:], log[-3000:])
    result = json.loads((out / "result.json").read_text())
    print(json.dumps({"wall_s": round(wall_s, 1), **result["timings_s"]}))
    journal = "\n".join(result.get("journal", {}).get("tail", []))
    assert "error" not in result, (
        result["error"]["traceback"] + log + "\n" + journal
    )
    failed = {k: v for k, v in result["checks"].items() if not v["ok"]}
    assert not failed, (failed, result["journal"]["tail"][-30:])
    assert len(result["checks"]) == 11
