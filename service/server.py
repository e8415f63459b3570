"""The server: both gRPC listeners, health, reflection, the override refresher, reloads and graceful stop."""

from __future__ import annotations

import logging
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from regionlock.admin.v1 import admin_pb2, admin_pb2_grpc
from regionlock.service.admin_servicer import AdminServicer
from regionlock.service.auth import AuthInterceptor, TokenFileError, TokenStore
from regionlock.service.check_servicer import DeviceCheckServicer
from regionlock.service.metrics import Metrics, start_metrics_listener
from regionlock.service.overrides.index import OverrideIndexRefresher
from regionlock.service.overrides.store import open_store
from regionlock.service.settings import Settings
from regionlock.service.snapshot import Snapshot, SnapshotHolder
from regionlock.v1 import device_check_pb2, device_check_pb2_grpc

log = logging.getLogger(__name__)
CHECK_SERVICE = device_check_pb2.DESCRIPTOR.services_by_name["DeviceCheckService"].full_name
ADMIN_SERVICE = admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name


def grpc_options(settings: Settings, reuse_port: bool) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.so_reuseport", 1 if reuse_port else 0),
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
    device_check_pb2_grpc.add_DeviceCheckServiceServicer_to_server(servicer, server)
    health_servicer = _add_health_and_reflection(server, [CHECK_SERVICE])
    port = server.add_insecure_port(address or settings.check_addr)
    if port == 0:
        raise OSError(f"check_addr: can't listen on {address or settings.check_addr}")
    return server, port, health_servicer


def _admin_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    if settings.admin_tls_cert is None:
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
    """One serving process: both listeners over one snapshot holder and one override store."""

    settings: Settings
    metrics: Metrics = field(default_factory=Metrics)
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
        self.check_servicer = DeviceCheckServicer(self.holder, self.metrics, self.settings.max_batch)
        self.check_server, self.check_port, self._check_health = create_check_server(self.settings, self.check_servicer)
        self.auth = AuthInterceptor(
            self._load_tokens(), on_denied=lambda code: self.metrics.auth_failures.labels(code).inc()
        )
        self.admin_servicer = AdminServicer(self)
        self.admin_server, self.admin_port, self._admin_health = create_admin_server(
            self.settings, self.admin_servicer, self.auth
        )
        self._reload_lock = threading.Lock()

    def _load_tokens(self) -> TokenStore:
        """The token file; a missing one leaves Admin refusing every call (a malformed one stops the start)."""
        path = self.settings.tokens_path
        if not path.exists():
            log.warning(
                "no token file at %s: every Admin call will be refused until one is created with "
                "`regionlock token create NAME --role operator --tokens %s` and the server reloads (SIGHUP)",
                path,
                path,
            )
            return TokenStore([])
        return TokenStore.load(path)

    def _on_swap(self, snapshot: Snapshot) -> None:
        v = snapshot.versions
        self.metrics.serving(v.geo, v.allowlist, v.policy, snapshot.loaded_at, v.overrides_revision)

    def start(self) -> None:
        """Start listening; checks answer UNAVAILABLE and health says NOT_SERVING until data loads."""
        if self.settings.metrics_addr:
            self.metrics_port = start_metrics_listener(self.metrics, self.settings.metrics_addr)
        self.refresher.start()
        self.check_server.start()
        self.admin_server.start()
        self._admin_health.set("", health_pb2.HealthCheckResponse.SERVING)
        self._admin_health.set(ADMIN_SERVICE, health_pb2.HealthCheckResponse.SERVING)
        log.info("DeviceCheck on port %d, Admin on port %d", self.check_port, self.admin_port)

    def reload(self) -> Snapshot:
        """Load the data files and policy into a new snapshot (raises FailedPrecondition, old data kept)."""
        with self._reload_lock:
            try:
                self.auth.tokens = self._load_tokens()
            except TokenFileError as exc:
                log.error("token file not reloaded, the previous tokens stay in force: %s", exc)
            try:
                snapshot = self.holder.reload(self.settings)
            except Exception:
                self.metrics.reloads.labels("failed").inc()
                raise
            self.metrics.reloads.labels("ok").inc()
            for name in ("", CHECK_SERVICE):
                self._check_health.set(name, health_pb2.HealthCheckResponse.SERVING)
            return snapshot

    def stop(self, grace: float | None = None) -> None:
        """Stop accepting calls, let in-flight ones finish within the grace period, then release the store."""
        grace = self.settings.grace_seconds if grace is None else grace
        for health_servicer in (self._check_health, self._admin_health):
            health_servicer.enter_graceful_shutdown()
        done = [self.check_server.stop(grace), self.admin_server.stop(grace)]
        for event in done:
            event.wait()
        self.refresher.stop()
        self.store.close()
        log.info("stopped")
