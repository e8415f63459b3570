"""The server: both gRPC listeners, health, reflection, the override refresher, reloads and graceful stop."""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry

from regionlock.admin.v1 import admin_pb2, admin_pb2_grpc
from regionlock.service.errors import ServiceError
from regionlock.service.overrides.factory import open_store
from regionlock.service.overrides.index import OverrideIndexRefresher
from regionlock.service.server.admin.servicer import AdminServicer
from regionlock.service.server.auth import AuthInterceptor, TokenEntry, TokenFile, TokenFileError, TokenStore
from regionlock.service.server.check.servicer import DeviceCheckServicer, add_to_server, utc_now
from regionlock.service.server.metrics import Metrics, start_metrics_listener
from regionlock.service.server.settings import Settings
from regionlock.service.snapshot import Snapshot, SnapshotHolder, allowlist_built_at
from regionlock.v1 import device_check_pb2

log = logging.getLogger(__name__)
CHECK_SERVICE = device_check_pb2.DESCRIPTOR.services_by_name["DeviceCheckService"].full_name
ADMIN_SERVICE = admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
# the actors of audit events no token made: a reload by signal, a change of the token file (whoever ran
# `regionlock token`: the file doesn't say, and the CLI doesn't reach the store)
SIGNAL_ACTOR = "signal:SIGHUP"
TOKEN_FILE_ACTOR = "token-file"


def freeze_startup_objects() -> None:
    """Keep what start-up made (modules, gRPC and protobuf machinery, the first snapshot) out of the collector.

    A full collection scans every tracked object with the GIL held: about 15 ms here for a serving process,
    a stall for every call in flight and the largest part of the p99 at moderate load. Objects made after
    this (calls, later snapshots) are collected as usual.
    """
    gc.collect()
    gc.freeze()


def grpc_options(settings: Settings, reuse_port: bool) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.so_reuseport", 1 if reuse_port else 0),
        # calls grpc-core holds until the Python server takes them: past the first number it refuses some at
        # random (CANCELLED), past the second all. With grpc-core's own 1,000 and 3,000, 2 workers refused
        # 22% of 3,000 calls in flight and 86% of 6,000 (benchmarks/RESULTS.md, "Calls in flight")
        ("grpc.server.max_pending_requests", settings.max_pending_calls),
        ("grpc.server.max_pending_requests_hard_limit", 3 * settings.max_pending_calls),
    ]


def _add_health_and_reflection(server: grpc.Server, service_names: list[str]) -> health.HealthServicer:
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ["", *service_names]:
        health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    reflection.enable_server_reflection([*service_names, HEALTH_SERVICE, reflection.SERVICE_NAME], server)
    return health_servicer


def create_check_server(
    settings: Settings, servicer: DeviceCheckServicer, address: str | None = None, reuse_port: bool = False
) -> tuple[grpc.Server, int, health.HealthServicer]:
    """The DeviceCheck listener, bound but not started; port 0 binds a free port."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix="check"),
        options=grpc_options(settings, reuse_port),
    )
    # identity serializers: the batch kernel reads the wire bytes; streams on a pool of their own
    add_to_server(servicer, server)
    health_servicer = _add_health_and_reflection(server, [CHECK_SERVICE])
    port = server.add_insecure_port(address or settings.check_addr)
    if port == 0:
        raise OSError(f"check_addr: can't listen on {address or settings.check_addr}")
    return server, port, health_servicer


def _admin_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    if settings.admin_tls_cert is None or settings.admin_tls_key is None:  # (settings refuse one without the other)
        return None
    key = settings.admin_tls_key.read_bytes()
    cert = settings.admin_tls_cert.read_bytes()
    client_ca = settings.admin_tls_client_ca.read_bytes() if settings.admin_tls_client_ca else None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def create_admin_server(
    settings: Settings, servicer: AdminServicer, interceptor: AuthInterceptor
) -> tuple[grpc.Server, int, health.HealthServicer]:
    """The Admin listener (token auth, optional TLS or mutual TLS), bound but not started."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="admin"),
        interceptors=[interceptor],
        options=grpc_options(settings, reuse_port=False),
    )
    admin_pb2_grpc.add_AdminServiceServicer_to_server(servicer, server)
    health_servicer = _add_health_and_reflection(server, [ADMIN_SERVICE])
    credentials = _admin_credentials(settings)
    if credentials is None:
        port = server.add_insecure_port(settings.admin_addr)
    else:
        port = server.add_secure_port(settings.admin_addr, credentials)
    if port == 0:
        raise OSError(f"admin_addr: can't listen on {settings.admin_addr}")
    return server, port, health_servicer


@dataclass
class Service:
    """One serving process: the DeviceCheck and/or Admin listeners over one snapshot holder and one store.

    A single process serves both; with several workers, each worker serves DeviceCheck (sharing the port
    with SO_REUSEPORT) and one admin process serves Admin and the metrics of all (see workers.py).
    """

    settings: Settings
    serve_check: bool = True
    serve_admin: bool = True
    reuse_port: bool = False
    metrics: Metrics = field(default_factory=Metrics)
    # the admin process of a multi-process server: after its own successful reload, reload the workers
    on_reloaded: Callable[[], None] | None = None
    check_port: int = 0
    admin_port: int = 0
    metrics_port: int = 0
    start_time: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        self.holder = SnapshotHolder(on_swap=self._on_swap)
        self.store = open_store(self.settings.store_url)
        self.refresher = OverrideIndexRefresher(
            self.store, on_update=self.holder.set_overrides, interval=self.settings.override_poll_seconds
        )
        self.store.watch(self.refresher.wake)  # changes committed by other replicas, as soon as they commit
        self._servers: list[grpc.Server] = []
        self._health: list[health.HealthServicer] = []
        self._check_health: health.HealthServicer | None = None
        if self.serve_check:
            self.check_servicer = DeviceCheckServicer(
                self.holder, self.metrics, self.settings.max_batch, max_streams=self.settings.max_streams
            )
            server, self.check_port, self._check_health = create_check_server(
                self.settings, self.check_servicer, reuse_port=self.reuse_port
            )
            self._servers.append(server)
            self._health.append(self._check_health)
        if self.serve_admin:
            self.tokens = self._load_tokens()
            self.auth = AuthInterceptor(
                self.tokens, on_denied=lambda code: self.metrics.auth_failures.labels(code).inc()
            )
            self.admin_servicer = AdminServicer(self)
            server, self.admin_port, self._admin_health = create_admin_server(
                self.settings, self.admin_servicer, self.auth
            )
            self._servers.append(server)
            self._health.append(self._admin_health)
        self._reload_lock = threading.Lock()
        self._stopped = threading.Event()

    def _load_tokens(self) -> TokenFile:
        """The token file, re-read when it changes; a missing one leaves Admin refusing every call until it
        is created (a malformed one stops the start)."""
        path = self.settings.tokens_path
        if not path.exists():
            log.warning(
                "no token file at %s: every Admin call will be refused until one is created with "
                "`regionlock token create NAME --role operator --tokens %s`",
                path,
                path,
            )
        tokens = TokenFile(path, on_change=self._on_tokens_changed)
        # tokens created while no server watched the file: recorded now (once, whoever starts first)
        self._audit_tokens([("token_create", entry) for entry in tokens.store.entries])
        return tokens

    def _on_tokens_changed(self, before: TokenStore, after: TokenStore) -> None:
        """Audit what changed in the token file (told by TokenFile on a call's thread: handed to a thread)."""
        old = {entry.token_id: entry for entry in before.entries}
        new = {entry.token_id: entry for entry in after.entries}
        changes = [("token_create", e) for i, e in new.items() if i not in old]
        changes += [("token_revoke", e) for i, e in old.items() if i not in new]
        if changes:
            self._audit_tokens(changes)

    def _audit_tokens(self, changes: list[tuple[str, TokenEntry]]) -> None:
        def record() -> None:
            for action, entry in changes:
                details = {"name": entry.name, "role": entry.role, "token_id": entry.token_id}
                details["file"] = str(self.settings.tokens_path)
                try:  # once: replicas sharing the file and the store record each change once
                    self.store.record_event(action, TOKEN_FILE_ACTOR, utc_now(), details, once=True)
                except Exception as exc:
                    log.error("token change not recorded in the audit trail: %s %s: %s", action, entry.name, exc)

        threading.Thread(target=record, name="audit-tokens", daemon=True).start()

    def _audit_reload(self, actor: str, before: Snapshot | None, after: Snapshot | None, error: str) -> None:
        details = {"result": "failed" if error else "ok", "error": error}
        for name, snapshot in (("before", before), ("after", after)):
            if snapshot is not None:
                versions = snapshot.versions
                details |= {f"geo_{name}": versions.geo, f"allowlist_{name}": versions.allowlist}
                details[f"policy_{name}"] = versions.policy
        try:
            self.store.record_event("reload", actor, utc_now(), details)
        except Exception as exc:
            log.error("reload by %s not recorded in the audit trail: %s", actor, exc)

    def _on_swap(self, snapshot: Snapshot) -> None:
        v = snapshot.versions
        self.metrics.serving(v.geo, v.allowlist, v.policy, snapshot.loaded_at, v.overrides_revision)
        self.metrics.data_built(snapshot.geo_provenance.built_at, allowlist_built_at(snapshot.allowlist))

    def start(self, metrics_registry: CollectorRegistry | None = None) -> None:
        """Start listening; checks answer UNAVAILABLE and health says NOT_SERVING until data loads."""
        if self.serve_admin and self.settings.metrics_addr:
            registry = metrics_registry or self.metrics.registry
            try:
                self.metrics_port = start_metrics_listener(registry, self.settings.metrics_addr)
            except OSError as exc:
                addr = self.settings.metrics_addr
                raise OSError(exc.errno, f"metrics_addr {addr}: can't listen there ({exc.strerror or exc})") from exc
        self.refresher.start()
        threading.Thread(target=self._watch_staleness, name="staleness-gauge", daemon=True).start()
        for server in self._servers:
            server.start()
        if self.serve_admin:
            self._admin_health.set("", health_pb2.HealthCheckResponse.SERVING)
            self._admin_health.set(ADMIN_SERVICE, health_pb2.HealthCheckResponse.SERVING)
        log.info("serving: DeviceCheck on port %s, Admin on port %s", self.check_port or "-", self.admin_port or "-")

    def _watch_staleness(self) -> None:
        # a gauge a scrape can read in every process model (set_function does not work across processes)
        while True:
            self.metrics.overrides_staleness.set(self.refresher.staleness_seconds())
            self.metrics.update_process()
            if self._stopped.wait(1.0):
                return

    def reload(self, actor: str | None = None) -> Snapshot:
        """Load the data files and policy into a new snapshot (raises FailedPrecondition, old data kept).

        `actor` (the token name of a ReloadData, SIGNAL_ACTOR for SIGHUP; None for the load at start) is
        recorded with the versions before and after in the audit trail by the process that serves Admin.
        """
        with self._reload_lock:
            if self.serve_admin:
                try:
                    self.tokens.reload()
                except TokenFileError as exc:
                    log.error("token file not reloaded, the previous tokens stay in force: %s", exc)
            before = self.holder.current
            # a reload, not the load at start; counted where Admin is served, so once however many workers
            counted = before is not None and self.serve_admin
            try:
                snapshot = self.holder.reload(self.settings)
            except Exception as exc:
                if counted:
                    self.metrics.reloads.labels("failed").inc()
                if self.serve_admin and actor is not None:
                    message = exc.message if isinstance(exc, ServiceError) else "unexpected error; see the log"
                    self._audit_reload(actor, before, None, message)
                raise
            if counted:
                self.metrics.reloads.labels("ok").inc()
            if self.serve_admin and actor is not None:
                self._audit_reload(actor, before, snapshot, "")
            if self._check_health is not None:
                for name in ("", CHECK_SERVICE):
                    self._check_health.set(name, health_pb2.HealthCheckResponse.SERVING)
            return snapshot

    def reload_everywhere(self, actor: str) -> Snapshot:
        """Reload here (validating the new data) and then in every worker process, if there are any."""
        snapshot = self.reload(actor)
        if self.on_reloaded is not None:
            self.on_reloaded()
        return snapshot

    def stop(self, grace: float | None = None) -> None:
        """Stop accepting calls, let in-flight ones finish within the grace period, then release the store."""
        grace = self.settings.grace_seconds if grace is None else grace
        self._stopped.set()
        for health_servicer in self._health:
            health_servicer.enter_graceful_shutdown()
        for event in [server.stop(grace) for server in self._servers]:
            event.wait()
        self.refresher.stop()
        self.store.close()
        log.info("stopped")


def reload_in_background(service: Service) -> None:
    """What SIGHUP does: reload in a thread, so the signal handler returns at once."""
    threading.Thread(target=_reload, args=(service,), name="reload", daemon=True).start()


def _reload(service: Service) -> None:
    try:
        service.reload(SIGNAL_ACTOR)
    except ServiceError:
        pass  # logged and counted by the holder; the old data keeps serving
    except Exception:
        log.exception("reload failed unexpectedly; the old data keeps serving")
