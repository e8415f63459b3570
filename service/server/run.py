"""`regionlock serve`: settings, embedded data, one serving process, and its signals."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from typing import Any

from regionlock.service.errors import ServiceError
from regionlock.service.server.settings import Settings, load_settings

log = logging.getLogger(__name__)


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def serve_from_flags(flags: dict[str, Any]) -> int:
    """Resolve settings (SettingsError -> exit 2 in the CLI), prepare data, serve until SIGTERM/SIGINT."""
    settings = load_settings(flags)
    configure_logging(settings.log_level)
    return serve(settings)


def serve(settings: Settings) -> int:
    from regionlock.service.server.auth import TokenFileError
    from regionlock.service.server.embedded import prepare_embedded_data, print_examples

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if settings.uses_embedded_data:
        prepare_embedded_data(settings)
    if settings.worker_count > 1:
        return _serve_workers(settings)
    # imported only here: a multi-process supervisor must not import prometheus-client before it is set up
    from regionlock.service.server.instance import AddressInUse, InstanceLock, check_bindable, port_of
    from regionlock.service.server.lifecycle import Service, freeze_startup_objects, reload_in_background

    lock = InstanceLock()  # held for the life of this process: one instance per port
    try:
        for name, address in (("check_addr", settings.check_addr), ("admin_addr", settings.admin_addr)):
            lock.claim(name, address)
            if port_of(address) != 0:
                check_bindable(name, address, reuse_port=False).close()
        service = Service(settings)
    except (ServiceError, TokenFileError, AddressInUse) as exc:
        print(f"regionlock: error: {exc}", file=sys.stderr)
        return 2
    except (OSError, RuntimeError) as exc:  # a listener that can't be bound (grpcio raises RuntimeError)
        print(f"regionlock: error: can't listen: {exc}", file=sys.stderr)
        return 2
    try:  # a port 0 is locked on the port chosen
        if port_of(settings.check_addr) == 0:
            lock.claim("check_addr", settings.check_addr, service.check_port)
        if port_of(settings.admin_addr) == 0:
            lock.claim("admin_addr", settings.admin_addr, service.admin_port)
    except AddressInUse as exc:
        service.stop(0)
        print(f"regionlock: error: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGHUP, lambda *_: reload_in_background(service))
    try:
        service.start()
    except OSError as exc:  # the metrics listener
        service.stop(0)
        print(f"regionlock: error: {exc.strerror or exc}", file=sys.stderr)
        return 2
    try:
        service.reload()
    except ServiceError as exc:
        log.error("can't load the data, not serving: %s", exc.message)
        service.stop(0)
        return 1
    freeze_startup_objects()
    if settings.uses_embedded_data:
        print_examples(settings, service.holder.current, service.check_port, service.admin_port)
    log.info("ready")
    stop.wait()
    log.info("stopping: in-flight calls have %.1fs to finish", settings.grace_seconds)
    service.stop()
    return 0


def _serve_workers(settings: Settings) -> int:
    """Check the data and the token file once here, so a mistake stops the start instead of a restart loop."""
    from regionlock.service.server.auth import TokenFileError, TokenStore
    from regionlock.service.server.instance import AddressInUse
    from regionlock.service.server.workers import claim_listeners, serve_workers
    from regionlock.service.snapshot import load_data

    try:
        claimed = claim_listeners(settings)
    except AddressInUse as exc:
        print(f"regionlock: error: {exc}", file=sys.stderr)
        return 2
    try:
        load_data(settings)
        if settings.tokens_path.exists():
            TokenStore.load(settings.tokens_path)
    except ServiceError as exc:
        log.error("can't load the data, not serving: %s", exc.message)
        return 1
    except TokenFileError as exc:
        print(f"regionlock: error: {exc}", file=sys.stderr)
        return 2
    return serve_workers(settings, settings.worker_count, claimed)
