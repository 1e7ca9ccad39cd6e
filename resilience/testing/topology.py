"""A local Redis Sentinel topology: a primary, replicas and sentinels as real redis-server processes.

Used by the failover tests and by ``resilience up --ha``::

    with SentinelTopology(tmp_path / "ha").start() as ha:
        os.environ["REDIS_URL"] = ha.url            # sentinel://127.0.0.1:p1;sentinel://...
        os.environ["REDIS_SENTINEL_MASTER"] = ha.master_name
        old = ha.kill_primary()                     # SIGKILL
        new = ha.wait_promoted(old)                 # a replica is the primary now
        ha.restart(old)                             # back, as a replica of the new primary

Every process is the redis-server the embedded mode runs (``RESILIENCE_REDIS_BINARY``,
PATH, or the bundled one), on a free loopback port with its data in a
private directory under ``directory``; sentinels run as ``redis-server
sentinel.conf --sentinel`` with a generated configuration whose
``down-after-milliseconds`` and ``failover-timeout`` are short, so a failover
takes a second or two. Every wait has a deadline; nothing sleeps to
synchronise.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from resilience.core.embedded import RedisServerProcess, find_redis_binary, free_port
from resilience.core.errors import EmbeddedRedisError
from resilience.core.localfiles import private_dir
from resilience.core.settings import load_settings
from resilience.testing.waiting import wait_for

__all__ = ["RedisNode", "SentinelNode", "SentinelTopology"]


@dataclass
class RedisNode(RedisServerProcess):
    """A data node: the primary, or a replica of ``replica_of`` (a port on loopback)."""

    replica_of: int | None = None

    def command(self) -> list[str]:
        argv = super().command()
        argv[argv.index("--appendfsync") + 1] = "no"  # written before the reply: a SIGKILL loses no ack'd write
        argv += ["--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0"]
        if self.replica_of:
            argv += ["--replicaof", "127.0.0.1", str(self.replica_of)]
        return argv

    def client(self, timeout: float = 1.0) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=timeout,
                           socket_connect_timeout=timeout, decode_responses=True)

    def role(self) -> str | None:
        """``master`` or ``slave`` as the node says now (None when it does not answer)."""
        client = self.client()
        try:
            return client.info("replication").get("role")
        except (redis.RedisError, OSError):
            return None
        finally:
            client.close()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


@dataclass
class SentinelNode(RedisServerProcess):
    """A sentinel: ``redis-server <dir>/sentinel.conf --sentinel``."""

    master_name: str = "mymaster"
    primary_port: int = 0
    quorum: int = 2
    down_after_ms: int = 1000
    failover_timeout_ms: int = 3000

    def write_config(self) -> Path:
        private_dir(self.directory)
        path = self.directory / "sentinel.conf"
        lines = [
            f"port {self.port}", "bind 127.0.0.1", f"dir {self.directory}", "logfile sentinel.log",
            "protected-mode no", "daemonize no",
            f"sentinel monitor {self.master_name} 127.0.0.1 {self.primary_port} {self.quorum}",
            f"sentinel down-after-milliseconds {self.master_name} {self.down_after_ms}",
            f"sentinel failover-timeout {self.master_name} {self.failover_timeout_ms}",
            f"sentinel parallel-syncs {self.master_name} 2",
        ]
        path.write_text("\n".join(lines) + "\n")  # the sentinel rewrites it as it learns the topology
        path.chmod(0o600)
        return path

    def command(self) -> list[str]:
        return [self.binary, str(self.directory / "sentinel.conf"), "--sentinel"]

    def start(self, timeout: float = 15.0) -> SentinelNode:
        if not self.port:
            self.port = free_port()
        self.write_config()
        super().start(timeout)
        return self

    def restart(self, timeout: float = 15.0) -> SentinelNode:
        self.stop()
        super().start(timeout)  # keep the configuration it rewrote
        return self

    def client(self, timeout: float = 1.0) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=timeout,
                           socket_connect_timeout=timeout, decode_responses=True)


@dataclass
class SentinelTopology:
    """A primary, ``replicas`` replicas and ``sentinels`` sentinels on loopback."""

    directory: Path
    master_name: str = "mymaster"
    replicas: int = 2
    sentinels: int = 3
    down_after_ms: int = 1000
    failover_timeout_ms: int = 3000
    binary: str | None = None
    #: Detached processes outlive their starter (``resilience up --ha`` runs them in the foreground
    #: and stops them itself; tests tie them to the test process).
    detached: bool = False
    nodes: list[RedisNode] = field(default_factory=list)
    sentinel_nodes: list[SentinelNode] = field(default_factory=list)

    # -- life cycle -------------------------------------------------------------------
    def start(self, timeout: float = 30.0) -> SentinelTopology:
        self.directory = Path(self.directory)
        private_dir(self.directory)
        binary = self.binary or find_redis_binary(load_settings())
        try:
            primary = RedisNode(binary=binary, directory=self.directory / "node-0", detached=self.detached)
            primary.start()
            self.nodes.append(primary)
            for i in range(1, self.replicas + 1):
                replica = RedisNode(binary=binary, directory=self.directory / f"node-{i}",
                                    replica_of=primary.port, detached=self.detached)
                replica.start()
                self.nodes.append(replica)
            self.wait_replicas_in_sync(timeout)
            quorum = self.sentinels // 2 + 1
            for i in range(self.sentinels):
                self.sentinel_nodes.append(SentinelNode(
                    binary=binary, directory=self.directory / f"sentinel-{i}", detached=self.detached,
                    master_name=self.master_name, primary_port=primary.port, quorum=quorum,
                    down_after_ms=self.down_after_ms, failover_timeout_ms=self.failover_timeout_ms).start())
            self.wait_settled(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for node in [*self.sentinel_nodes, *self.nodes]:
            node.stop()

    def __enter__(self) -> SentinelTopology:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- addresses ----------------------------------------------------------------------
    @property
    def url(self) -> str:
        """``REDIS_URL`` for it, in kombu's form."""
        return ";".join(f"sentinel://127.0.0.1:{s.port}" for s in self.sentinel_nodes)

    def env(self) -> dict[str, str]:
        return {"REDIS_URL": self.url, "REDIS_SENTINEL_MASTER": self.master_name}

    def node_at(self, port: int) -> RedisNode:
        for node in self.nodes:
            if node.port == port:
                return node
        raise KeyError(f"no node of this topology listens on {port}")

    def primary_port(self) -> int | None:
        """The primary the sentinels agree on now (None while they disagree or none answers)."""
        seen = set()
        for s in self.sentinel_nodes:
            client = s.client()
            try:
                host, port = client.sentinel_get_master_addr_by_name(self.master_name)  # type: ignore[misc]
                seen.add(int(port))
            except (redis.RedisError, OSError, TypeError, ValueError):
                continue
            finally:
                client.close()
        return seen.pop() if len(seen) == 1 else None

    def primary(self) -> RedisNode:
        port = wait_for(self.primary_port, 10, message="the sentinels to agree on a primary")
        return self.node_at(port)

    # -- conditions -----------------------------------------------------------------------
    def wait_replicas_in_sync(self, timeout: float = 30.0) -> None:
        """Every live replica's link to the primary is up."""
        def synced() -> bool:
            primaries = [n for n in self.nodes if n.ping() and n.role() == "master"]
            if len(primaries) != 1:
                return False
            client = primaries[0].client()
            try:
                info = client.info("replication")
            finally:
                client.close()
            live = sum(1 for n in self.nodes if n is not primaries[0] and n.ping())
            online = [v for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)
                      and v.get("state") == "online"]
            return len(online) >= live

        wait_for(synced, timeout, message="the replicas to sync with the primary")

    def wait_settled(self, timeout: float = 30.0) -> None:
        """Every sentinel knows the primary, every live replica and the other sentinels."""
        live_replicas = sum(1 for n in self.nodes if n.ping()) - 1

        def settled() -> bool:
            primary = self.primary_port()
            if primary is None:
                return False
            for s in self.sentinel_nodes:
                client = s.client()
                try:
                    master = client.sentinel_master(self.master_name)
                    replicas = [r for r in client.sentinel_slaves(self.master_name)
                                if "s_down" not in str(r.get("flags")) and "disconnected" not in str(r.get("flags"))]
                finally:
                    client.close()
                others = int(master.get("num-other-sentinels", 0))  # type: ignore[union-attr]
                if others < self.sentinels - 1 or len(replicas) < live_replicas:
                    return False
            return True

        wait_for(settled, timeout, interval=0.1, message="the sentinels to know the whole topology")

    # -- chaos ----------------------------------------------------------------------------
    def kill_primary(self) -> RedisNode:
        """SIGKILL the current primary; returns its node."""
        node = self.primary()
        node.kill()
        return node

    def kill_primary_with_replicas_behind(self, lag_sec: float) -> RedisNode:
        """SIGKILL the primary after ``lag_sec`` during which its replicas received nothing.

        The replicas are given a wrong ``masterauth`` and their links to the primary are cut
        (``CLIENT KILL TYPE replica``): they cannot resynchronise, so what the primary takes
        in that time never leaves it. After the kill the replicas get their setting back.
        ``lag_sec`` is the scenario's replication lag, not a wait for a condition.
        """
        from resilience.testing.waiting import hold_outage

        primary = self.primary()
        replicas = [node for node in self.nodes if node is not primary and node.ping()]
        for node in replicas:
            _config_set(node, "masterauth", "partitioned-from-the-primary")
        try:
            _client_kill_replicas(primary)
            hold_outage(lag_sec)
            primary.kill()
        finally:
            for node in replicas:
                _config_set(node, "masterauth", "")
        return primary

    def wait_promoted(self, old: RedisNode, timeout: float = 90.0) -> tuple[RedisNode, float]:
        """Wait until the sentinels name another primary and it says it is one.

        The deadline is long on purpose: a sentinel whose process was not scheduled for
        two seconds (a busy machine) enters TILT mode and holds failovers back for 30 s.

        Returns the new primary and the ``time.time()`` at which it was first seen promoted.
        """
        def promoted() -> RedisNode | None:
            port = self.primary_port()
            if port is None or port == old.port:
                return None
            node = self.node_at(port)
            return node if node.role() == "master" else None

        node = wait_for(promoted, timeout, interval=0.05, message=f"a replica to replace the primary on {old.port}")
        return node, time.time()

    def restart(self, node: RedisNode, timeout: float = 30.0, *, as_replica: bool = True) -> RedisNode:
        """Start a killed node again with its data; it ends up a replica of the current primary.

        ``as_replica=True`` starts it as one (``--replicaof``); ``False`` starts it as it was
        (a killed primary comes back believing it is the primary, with what its AOF holds) and
        waits for the sentinels to demote it.
        """
        node.replica_of = self.primary().port if as_replica else node.replica_of
        node.start(timeout)
        if not as_replica:
            wait_for(lambda: node.role() == "slave", timeout, message=f"the sentinels to demote {node.address}")
        if node.role() not in {"slave", "master"}:
            raise EmbeddedRedisError(f"redis-server on {node.port} did not come back")
        self.wait_replicas_in_sync(timeout)
        return node


def _config_set(node: RedisNode, name: str, value: str) -> None:
    client = node.client()
    try:
        client.config_set(name, value)
    finally:
        client.close()


def _client_kill_replicas(node: RedisNode) -> None:
    client = node.client()
    try:
        client.client_kill_filter(_type="replica")
    finally:
        client.close()
