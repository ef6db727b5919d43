"""A private ``redis-server`` for the test session: free port, no persistence, stoppable and restartable.

Tests that prove the daemon survives a Redis outage stop it and start it again on the same port.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from orchestrator.demo import free_port


class RedisServer:
    """One redis-server process on 127.0.0.1; ``stop()``/``start()`` keep the same port."""

    controllable = True

    def __init__(self, port: int | None = None, extra_args: list[str] | None = None) -> None:
        self.port = port or free_port()
        self._extra_args = extra_args or []
        self._dir = Path(tempfile.mkdtemp(prefix="orch-test-redis-"))
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        """The running server's process id."""
        if self._proc is None:
            raise RuntimeError("redis-server is not running")
        return self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        if self.running:
            return
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self._proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self._dir),
                "--enable-debug-command",
                "local",
                "--loglevel",
                "warning",
                *self._extra_args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._wait_ready()

    def start_sentinel(self, conf: Path) -> None:
        """Run as a Redis Sentinel with this configuration file (which it rewrites as it learns)."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self._proc = subprocess.Popen(
            [binary, str(conf), "--sentinel", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._wait_ready()

    def _wait_ready(self, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self._proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith((b"+PONG", b"-NOAUTH")):
                        return
            except OSError:
                pass
            time.sleep(0.02)
        raise RuntimeError(f"redis-server did not answer on port {self.port} within {timeout_s}s")

    def stop(self, *, save: bool = False) -> None:
        """Stop the server; with ``save`` it writes its data first and the next start reloads it
        (a persistent production Redis), otherwise the next start is empty."""
        if self._proc is None:
            return
        if save:
            with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
                sock.sendall(b"SHUTDOWN SAVE\r\n")
                with contextlib.suppress(OSError):
                    sock.recv(64)
        else:
            (self._dir / "dump.rdb").unlink(missing_ok=True)
        self._proc.terminate()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc = None

    def kill(self) -> None:
        """SIGKILL: no shutdown, no save; what it keeps is what its AOF (if on) had written."""
        if self._proc is None:
            return
        self._proc.kill()
        self._proc.wait()
        self._proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)


class ExternalRedis:
    """A Redis given by REDIS_URL: usable, but the tests cannot stop or restart it."""

    controllable = False
    running = True

    def __init__(self, url: str) -> None:
        self.url = url

    def start(self) -> None:
        pass

    def stop(self) -> None:
        raise RuntimeError("REDIS_URL is set: this Redis belongs to someone else and is not stopped")

    def kill(self) -> None:
        raise RuntimeError("REDIS_URL is set: this Redis belongs to someone else and is not killed")

    def close(self) -> None:
        pass


class SentinelDeployment:
    """A Sentinel-watched Redis on loopback: a master, ``replicas`` replicas and three sentinels (quorum 2),
    as a production deployment has them, with short timings: a master that does not answer for
    ``down_after_ms`` is failed over (the sentinels agree, elect a leader, promote the replica)."""

    SERVICE = "mymaster"

    def __init__(
        self, *, replicas: int = 1, down_after_ms: int = 1000, extra_args: list[str] | None = None
    ) -> None:
        # Replicas sync at once (the default waits 5 s for more replicas to share one transfer).
        args = ["--repl-diskless-sync-delay", "0", *(extra_args or [])]
        self.master = RedisServer(extra_args=list(args))
        self.replicas = [RedisServer(extra_args=list(args)) for _ in range(replicas)]
        self.sentinels = [RedisServer() for _ in range(3)]
        self._down_after_ms = down_after_ms

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.SERVICE}/0"

    @property
    def servers(self) -> list[RedisServer]:
        """The master and the replicas (which one is master changes with a failover)."""
        return [self.master, *self.replicas]

    def start(self) -> SentinelDeployment:
        self.master.start()
        for replica in self.replicas:
            replica._extra_args += ["--replicaof", "127.0.0.1", str(self.master.port)]
            replica.start()
        for sentinel in self.sentinels:
            conf = sentinel._dir / "sentinel.conf"
            conf.write_text(
                f"port {sentinel.port}\nbind 127.0.0.1\ndir {sentinel._dir}\n"
                f"sentinel monitor {self.SERVICE} 127.0.0.1 {self.master.port} 2\n"
                f"sentinel down-after-milliseconds {self.SERVICE} {self._down_after_ms}\n"
                f"sentinel failover-timeout {self.SERVICE} 10000\n"
                f"sentinel parallel-syncs {self.SERVICE} 1\n"
            )
            sentinel.start_sentinel(conf)
        self._wait_synced()
        return self

    def _wait_synced(self, timeout_s: float = 15.0) -> None:
        """Until every replica is in sync with the master and every sentinel knows every replica."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            info = _command(self.master.port, "INFO", "replication")
            synced = info.count("state=online")
            known = [
                _command(s.port, "SENTINEL", "REPLICAS", self.SERVICE).count("127.0.0.1")
                for s in self.sentinels
            ]
            if synced >= len(self.replicas) and all(k >= len(self.replicas) for k in known):
                return
            time.sleep(0.1)
        raise RuntimeError("the Sentinel deployment did not settle within {timeout_s}s")

    def master_port(self) -> int:
        """The master's port as the sentinels report it now."""
        answer = _command(self.sentinels[0].port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.SERVICE)
        return int(answer.split()[-1])

    def close(self) -> None:
        for server in [*self.sentinels, *self.servers]:
            server.close()


def _command(port: int, *args: str) -> str:
    """One command's raw RESP answer as text (enough to look for words in it)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(
            b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a.encode()), a.encode()) for a in args)
        )
        data = b""
        while b"\r\n" not in data:
            data += sock.recv(65536)
        if data.startswith(b"$"):  # a bulk string: read exactly its length
            size = int(data[1 : data.index(b"\r\n")])
            while len(data) < data.index(b"\r\n") + 2 + max(size, 0) + 2:
                data += sock.recv(65536)
        elif data.startswith(b"*"):  # an array: read until the server has nothing more for a moment
            sock.settimeout(0.2)
            try:
                while chunk := sock.recv(65536):
                    data += chunk
            except TimeoutError:
                pass
        return data.decode(errors="replace")


class ClusterDeployment:
    """A Redis Cluster on loopback: ``masters`` masters with ``replicas_each`` replicas each, made with
    ``redis-cli --cluster create`` as an operator makes one, with a short node timeout (a master that
    does not answer for ``node_timeout_ms`` is failed over by its replica)."""

    def __init__(self, *, masters: int = 3, replicas_each: int = 1, node_timeout_ms: int = 1000) -> None:
        self._replicas_each = replicas_each
        self.nodes = [
            RedisServer(
                extra_args=[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-node-timeout",
                    str(node_timeout_ms),
                    # A replica fails over however long ago it last heard from its master: with the
                    # default (10), a replica of a master idle for a few seconds on this machine refused
                    # ("Disconnected from master for longer than allowed") and the slots stayed down.
                    "--cluster-replica-validity-factor",
                    "0",
                    # Replicas sync at once (the default waits 5 s for more replicas to share the
                    # transfer): until then a failover would promote an empty replica.
                    "--repl-diskless-sync-delay",
                    "0",
                ]
            )
            for _ in range(masters * (1 + replicas_each))
        ]
        for node in self.nodes:
            # The bus port is chosen as the data port is (free, below the ephemeral range), not left to be
            # port + 10000: that one may be taken, or be in the range outgoing connections use.
            bus = free_port()
            node._extra_args += [
                "--cluster-config-file",
                str(node._dir / "nodes.conf"),
                "--cluster-port",
                str(bus),
            ]

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes[:3])

    def start(self) -> ClusterDeployment:
        for node in self.nodes:
            node.start()
        binary = shutil.which("redis-cli")
        if binary is None:
            raise RuntimeError("redis-cli is not installed (apt-get install redis-tools)")
        subprocess.run(
            [
                binary, "--cluster", "create", *[f"127.0.0.1:{n.port}" for n in self.nodes],
                "--cluster-replicas", str(self._replicas_each), "--cluster-yes",
            ],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60,
        )  # fmt: skip
        self.wait_ok()
        return self

    def wait_ok(self, timeout_s: float = 30.0) -> None:
        """Until every running node says the cluster is ok and every slot is served, and every master's
        replicas are in sync with it."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            answers = [_command(n.port, "CLUSTER", "INFO") for n in self.nodes if n.running]
            ok = all("cluster_state:ok" in a and "cluster_slots_ok:16384" in a for a in answers)
            if ok and all(
                _command(port, "INFO", "replication").count("state=online") >= self._replicas_each
                for port in self.masters()
            ):
                return
            time.sleep(0.1)
        raise RuntimeError(f"the cluster did not become ok within {timeout_s}s")

    def masters(self) -> dict[int, tuple[int, int]]:
        """Port → (first slot, last slot) of each master serving slots now (its first range)."""
        answer = _command(next(n.port for n in self.nodes if n.running), "CLUSTER", "NODES")
        found = {}
        for line in answer.splitlines():
            parts = line.split()
            if len(parts) > 8 and "master" in parts[2] and "fail" not in parts[2]:
                first, _, last = parts[8].partition("-")
                found[int(parts[1].split(":")[1].split("@")[0])] = (int(first), int(last or first))
        return found

    def master_of(self, key: str) -> int:
        """The port of the master serving ``key``'s slot now."""
        any_port = next(n.port for n in self.nodes if n.running)
        slot = int(_command(any_port, "CLUSTER", "KEYSLOT", key).strip().lstrip(":"))
        return next(port for port, (first, last) in self.masters().items() if first <= slot <= last)

    def replicas_of(self, port: int) -> list[int]:
        """The ports of the replicas of the master on ``port``."""
        answer = _command(next(n.port for n in self.nodes if n.running), "CLUSTER", "NODES")
        lines = [line.split() for line in answer.splitlines() if len(line.split()) > 3]
        master_id = next(p[0] for p in lines if p[1].split("@")[0].endswith(f":{port}"))
        return [int(p[1].split(":")[1].split("@")[0]) for p in lines if p[3] == master_id]

    def node(self, port: int) -> RedisServer:
        return next(n for n in self.nodes if n.port == port)

    def flush(self) -> None:
        for port in self.masters():
            _command(port, "FLUSHALL")

    def close(self) -> None:
        for node in self.nodes:
            node.close()
