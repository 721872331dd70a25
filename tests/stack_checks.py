"""Checks of a running stack that read the kernel's view: who listens where, which variables a
process holds, whether anything of the stack is left. Shared by the embedded and team stack tests."""

from __future__ import annotations

import base64
import os
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from pathlib import Path

from pipelines.devstack import credentials
from pipelines.devstack.config import StackConfig

WILDCARD_ADDRESSES = ("0.0.0.0", "::")


def _decode_address(hex_address: str) -> tuple[str, int]:
    host_hex, port_hex = hex_address.split(":")
    raw = bytes.fromhex(host_hex)
    if len(raw) == 4:
        host = ".".join(str(b) for b in reversed(raw))
    else:  # IPv6: four little-endian 32-bit words
        words = [raw[i:i + 4][::-1] for i in range(0, 16, 4)]
        host = ":".join(b"".join(words)[i:i + 2].hex() for i in range(0, 16, 2))
        host = "::" if set(host.replace(":", "")) == {"0"} else host
    return host, int(port_hex, 16)


def listening_sockets() -> dict[int, tuple[str, int]]:
    """Socket inode -> (address, port) of every TCP socket in LISTEN state (IPv4 and IPv6)."""
    found: dict[int, tuple[str, int]] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A":  # LISTEN
                found[int(fields[9])] = _decode_address(fields[1])
    return found


def listeners_of(pids: Iterable[int]) -> list[tuple[int, str, int]]:
    """(pid, address, port) of every listening TCP socket held by one of ``pids``."""
    sockets = listening_sockets()
    result = []
    for pid in pids:
        try:
            links = [p.readlink() for p in Path(f"/proc/{pid}/fd").iterdir()]
        except OSError:
            continue
        for link in links:
            text = str(link)
            if text.startswith("socket:["):
                inode = int(text[len("socket:["):-1])
                if inode in sockets:
                    result.append((pid, *sockets[inode]))
    return sorted(set(result))


def environ_of(pid: int) -> dict[str, str]:
    """The environment ``pid`` was started with."""
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def http_status(url: str, method: str = "GET", data: bytes | None = None,
                auth: tuple[str, str] | None = None) -> int:
    """The HTTP status ``url`` answers with (0 when nothing listens)."""
    request = urllib.request.Request(url, data=data, method=method)
    if auth is not None:
        request.add_header("Authorization", "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


def assert_no_secret_in_logs(cfg: StackConfig, secret: Mapping[str, str]) -> None:
    """No value of ``secret`` appears in any log file the stack or its tasks wrote."""
    assert credentials.secret_values(secret)
    files = [*cfg.logs_dir.rglob("*.log"), *(cfg.airflow_home / "logs").rglob("*.log")]
    assert files
    for log_file in files:
        text = log_file.read_text(errors="replace")
        leaked = [name for name, value in secret.items()
                  if any(v in text for v in credentials.secret_values({name: value}))]
        assert not leaked, f"{log_file} contains {leaked}"


def restore_environ(saved: Mapping[str, str | None]) -> None:
    """Put back the variables of ``saved`` (name -> value before, None: was not set)."""
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
