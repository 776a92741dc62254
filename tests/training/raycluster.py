"""A real one-node Ray cluster on loopback for the tests, and its processes.

`ray start --head --block` runs in its own session; the cluster is every
process descending from it (GCS, raylet, and the raylet's workers, which sit in
process groups of their own), so teardown kills exactly those, by pid, instead
of `ray stop` (which would stop any Ray on the machine).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

LOOPBACK_ENV = {
    # Ray replaces 127.0.0.1 by the machine's routable address unless it thinks
    # multi-node clusters are off (its switch for laptops): keep the test on loopback.
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    # Hermetic: without this, a token in ~/.ray/auth_token (which a plain `ray.init()`
    # on this machine leaves behind) turns token auth on for the cluster but not for
    # every client. Nothing outside this machine can reach a loopback cluster anyway.
    "RAY_AUTH_MODE": "disabled",
}


@dataclass(frozen=True)
class RayCluster:
    address: str
    pid: int

    def processes(self) -> dict[int, str]:
        """pid -> command line of every live process of this cluster."""
        return {pid: cmd for pid, cmd in _tree(self.pid).items() if pid != self.pid}

    def task_workers(self, task: str) -> list[int]:
        """Workers running a task named `task` (Ray titles them `ray::<task>`)."""
        return [pid for pid, cmd in self.processes().items() if cmd.startswith(f"ray::{task}")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tree(root: int) -> dict[int, str]:
    """`root` and its descendants, from /proc (pid -> command line)."""
    parent: dict[int, int] = {}
    cmds: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] == "Z":
            continue
        parent[int(entry.name)] = int(fields[1])
        cmds[int(entry.name)] = cmd
    found = {root}
    grew = True
    while grew:
        grew = False
        for pid, ppid in parent.items():
            if ppid in found and pid not in found:
                found.add(pid)
                grew = True
    return {pid: cmds[pid] for pid in found if pid in cmds}


def _kill(pids: Iterable[int]) -> None:
    for pid in pids:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def watch(owner: int, root: int) -> None:
    """Kill the cluster under `root` if `owner` (the test process) dies without tearing it down.

    Runs as its own process (`python -m tests.training.raycluster OWNER ROOT`): a
    test process that crashes (a native abort skips every fixture) must not leave
    a cluster running. The tree is remembered while it is whole: once `ray start`
    is gone its children are re-parented and could no longer be found.
    """
    seen: set[int] = set()
    while _alive(root):
        seen |= set(_tree(root))
        if not _alive(owner):
            _kill(seen)
            return
        time.sleep(1.0)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[-1][:1]
    except (ProcessLookupError, FileNotFoundError):
        return False
    return state != "Z"  # a zombie is a dead process not yet reaped


@contextmanager
def ray_cluster(temp_dir: Path, cpus: int = 2, timeout_s: float = 90.0) -> Iterator[RayCluster]:
    """Start a head node with `cpus` CPUs on 127.0.0.1; kill every process of it afterwards."""
    port = free_port()
    env = {
        **os.environ,
        **LOOPBACK_ENV,
        "OMP_NUM_THREADS": "1",
        # Workers import the jobs by name, test helpers included.
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
    }
    env.pop("RAY_ADDRESS", None)
    ray_bin = Path(sys.executable).with_name("ray")
    cmd = [
        str(ray_bin) if ray_bin.exists() else "ray",
        "start",
        "--head",
        "--block",
        f"--num-cpus={cpus}",
        f"--port={port}",
        # Every fixed default port moved to a free one: two test sessions may run at once.
        f"--ray-client-server-port={free_port()}",
        f"--dashboard-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}",
        "--include-dashboard=false",
        "--disable-usage-stats",
        f"--temp-dir={temp_dir}",
    ]
    log_path = temp_dir.parent / "ray-start.log"
    log = log_path.open("wb")
    proc = subprocess.Popen(
        cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    cluster = RayCluster(f"127.0.0.1:{port}", proc.pid)
    try:
        deadline = time.monotonic() + timeout_s
        subprocess.Popen(
            [sys.executable, "-m", "tests.training.raycluster", str(os.getpid()), str(proc.pid)],
            env=env,
            start_new_session=True,
        )
        while "Ray runtime started" not in log_path.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray start failed:\n{log_path.read_text(errors='replace')}")
            time.sleep(0.3)
        yield cluster
    finally:
        _kill(_tree(proc.pid))  # the watchdog then sees the cluster gone and ends
        proc.wait(timeout=30)
        log.close()


if __name__ == "__main__":
    watch(int(sys.argv[1]), int(sys.argv[2]))
