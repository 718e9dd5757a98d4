"""
A real ClickHouse server for tests: Debian's clickhouse-server, started
on loopback from a temporary config (as /work/shared/notes shows), on
free ports, with its own data directory; paused, killed and restarted.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import socket
import subprocess
import time

SERVER = shutil.which("clickhouse-server") or "/usr/sbin/clickhouse-server"

CONFIG = """<?xml version="1.0"?>
<yandex>
  <logger><level>warning</level><log>{dir}/log/server.log</log>
    <errorlog>{dir}/log/server.err.log</errorlog><size>10M</size>
    <count>1</count></logger>
  <listen_host>127.0.0.1</listen_host>
  <http_port>{http_port}</http_port>
  <tcp_port>{tcp_port}</tcp_port>
  <path>{dir}/data/</path><tmp_path>{dir}/data/tmp/</tmp_path>
  <user_files_path>{dir}/data/user_files/</user_files_path>
  <format_schema_path>{dir}/data/format_schemas/</format_schema_path>
  <mark_cache_size>268435456</mark_cache_size>
  <users_config>users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <timezone>UTC</timezone>
</yandex>
"""
USERS = """<?xml version="1.0"?>
<yandex>
  <profiles><default></default></profiles>
  <users><default><password></password>
    <networks><ip>127.0.0.1</ip></networks>
    <profile>default</profile><quota>default</quota></default></users>
  <quotas><default><interval><duration>3600</duration><queries>0</queries>
    <errors>0</errors><result_rows>0</result_rows><read_rows>0</read_rows>
    <execution_time>0</execution_time></interval></default></quotas>
</yandex>
"""


def available() -> bool:
    """Whether the server binary is installed here."""
    return os.access(SERVER, os.X_OK)


def free_port() -> int:
    """A TCP port nobody listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ClickHouseServer:
    """One clickhouse-server process over a data directory it keeps
    across restarts."""

    def __init__(self, directory: pathlib.Path) -> None:
        self.dir = directory
        self.tcp_port = free_port()
        self.http_port = free_port()
        (directory / "log").mkdir(parents=True, exist_ok=True)
        (directory / "data").mkdir(exist_ok=True)
        (directory / "config.xml").write_text(
            CONFIG.format(
                dir=directory, http_port=self.http_port, tcp_port=self.tcp_port
            )
        )
        (directory / "users.xml").write_text(USERS)
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, database: str = "livemon") -> str:
        """The sink's URL for ``database`` on this server."""
        return f"clickhouse://127.0.0.1:{self.tcp_port}/{database}"

    def start(self, timeout_s: float = 30.0) -> None:
        """Start the server and wait until it answers queries."""
        with open(self.dir / "log" / "stdout.log", "ab") as out:
            self.process = subprocess.Popen(
                [SERVER, f"--config-file={self.dir / 'config.xml'}"],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
            )
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self.query("SELECT 1")
                return
            except Exception:
                if self.process.poll() is not None:
                    raise RuntimeError(self._log()) from None
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def query(self, sql: str) -> list[tuple]:
        """Run ``sql``; return its rows (raises while the server is down)."""
        from clickhouse_driver import Client

        client = Client(
            "127.0.0.1",
            port=self.tcp_port,
            connect_timeout=2,
            send_receive_timeout=10,
        )
        try:
            return client.execute(sql)
        finally:
            client.disconnect()

    def pause(self) -> None:
        """SIGSTOP: connections stay open, nothing answers."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after ``pause``."""
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL, as a crash: nothing flushed, nothing said."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.kill()
            self.process.wait(timeout=30)

    def stop(self) -> None:
        """Kill the server (if it runs); the data directory stays."""
        self.kill()
        self.process = None

    def _log(self) -> str:
        parts = []
        for name in ("stdout.log", "server.err.log"):
            path = self.dir / "log" / name
            if path.exists():
                parts.append(path.read_text()[-4000:])
        return "clickhouse-server did not start:\n" + "\n".join(parts)
