"""Multi-process serving: a supervisor forks DeviceCheck workers sharing one port and one Admin process.

The supervisor never creates gRPC objects, so forking it is safe at any time, also to restart a worker
that died. Each process loads and verifies the data files itself, sharing one copy of each with its siblings
(share_loaded_files), and keeps its own override index caught up with the shared store by polling; the Admin
process also serves the metrics of all processes (prometheus-client's multiprocess mode).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import sys
import threading
import time
from types import FrameType

from regionlock.core.fileformat import share_loaded_files
from regionlock.service.server.instance import InstanceLock, check_bindable, port_of
from regionlock.service.server.leftovers import DATA_PREFIX, METRICS_PREFIX, instance_dir, remove_leftovers
from regionlock.service.server.settings import Settings

log = logging.getLogger(__name__)
ADMIN = "admin"
CHECK = "check"
_RESTART_BACKOFF_MAX = 30.0
# a process that fails at start (store, token file, listener, missing dependency) exits with this code after
# writing its one line to the supervisor's pipe; the supervisor then stops and exits 2 with that line
START_FAILED = 2
# a process that dies this many times within this many seconds stops the supervisor (exit 1): a crash loop
# is an outage to look at, not something to hide behind restarts
CRASH_LOOP_DEATHS = 5
CRASH_LOOP_WINDOW = 60.0
_HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)


def reserve_port(address: str) -> tuple[str, socket.socket]:
    """Bind a SO_REUSEPORT socket to the DeviceCheck address (for port 0: pick a port all workers can share)
    and keep it bound; a port held by another process raises AddressInUse."""
    sock = check_bindable("check_addr", address, reuse_port=True)
    host = address.rpartition(":")[0]
    return f"{host}:{sock.getsockname()[1]}", sock


class Supervisor:
    """Starts, watches, restarts, signals and stops the worker processes."""

    def __init__(self, settings: Settings, workers: int, lock: InstanceLock | None = None) -> None:
        # the children inherit the lock's sockets and keep them: the port stays locked until the last process
        # of this instance is gone, also a worker still draining after the supervisor was killed
        self.settings = settings
        self.lock = lock
        self.workers = workers
        self.pid = os.getpid()
        self.children: dict[int, tuple[str, float, int | None]] = {}  # pid: role, start, worker slot
        self.stopping = False
        self.failures: dict[str, int] = {ADMIN: 0, CHECK: 0}
        self.deaths: dict[str, list[float]] = {ADMIN: [], CHECK: []}
        self.exit_code = 0
        self.error_line: str | None = None  # printed on stderr when the supervisor stops because of it
        self._errors_read, self._errors_write = os.pipe()  # children's start-up failures, one line each
        os.set_blocking(self._errors_read, False)

    def _signal_children(self, signum: int, role: str | None = None) -> None:
        for pid, (child_role, *_) in list(self.children.items()):
            if role is None or child_role == role:
                try:
                    os.kill(pid, signum)
                except ProcessLookupError:
                    pass

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if os.getpid() != self.pid:
            return  # a child that has not installed its own handlers yet
        if signum in (signal.SIGTERM, signal.SIGINT):
            if not self.stopping:
                log.info("stopping %d processes", len(self.children))
            self.stopping = True
            self._signal_children(signal.SIGTERM)
        elif signum == signal.SIGHUP:
            self._signal_children(signal.SIGHUP)
        elif signum == signal.SIGUSR1:
            # the Admin process reloaded (and so validated) the data: reload the workers too
            self._signal_children(signal.SIGHUP, CHECK)

    def spawn(self, role: str, slot: int | None = None) -> None:
        # Signals stay blocked across the fork until the child has its own handlers: a SIGTERM that
        # arrives in between is then delivered to them instead of being lost.
        signal.pthread_sigmask(signal.SIG_BLOCK, _HANDLED)
        pid = -1
        try:
            pid = os.fork()
        finally:
            if pid != 0:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, _HANDLED)
        if pid == 0:
            code = 1
            try:
                pin_worker(slot, self.workers, self.settings.cpu_affinity)
                os.close(self._errors_read)
                code = run_child(self.settings, role, self._errors_write)
            except BaseException:
                log.exception("%s process failed", role)
            finally:
                logging.shutdown()
                os._exit(code)
        self.children[pid] = (role, time.monotonic(), slot)
        log.info("started %s process %d", role, pid)

    def run(self) -> int:
        for signum in _HANDLED:
            signal.signal(signum, self._on_signal)
        try:
            return self._run()
        finally:
            os.close(self._errors_read)
            os.close(self._errors_write)
            if self.error_line is not None:
                print(self.error_line, file=sys.stderr, flush=True)

    def _stop_all(self, exit_code: int, error_line: str) -> None:
        """Stop every process because of `error_line` (printed once at the end) with `exit_code`."""
        if self.error_line is None:
            self.error_line, self.exit_code = error_line, exit_code
        self.stopping = True
        self._signal_children(signal.SIGTERM)

    def _start_failure(self) -> str:
        try:
            text = os.read(self._errors_read, 65536).decode(errors="replace")
        except BlockingIOError:
            text = ""
        lines = [line for line in text.splitlines() if line.strip()]
        return lines[0] if lines else "regionlock: error: a process failed at start"

    def _run(self) -> int:
        self.spawn(ADMIN)
        for worker in range(self.workers):
            self.spawn(CHECK, worker)
        deadline: float | None = None
        while self.children:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                if self.lock is not None:
                    self.lock.drain()
                if self.stopping:
                    deadline = deadline or time.monotonic() + self.settings.grace_seconds + 10
                    if time.monotonic() > deadline:
                        log.error("processes still running after the grace period: killing them")
                        self._signal_children(signal.SIGKILL)
                time.sleep(0.05)
                continue
            role, started, slot = self.children.pop(pid)
            _mark_dead(pid)
            code = os.waitstatus_to_exitcode(status)
            if self.stopping:
                self.exit_code = self.exit_code or (0 if code == 0 else 1)
                continue
            if code == START_FAILED:
                self._stop_all(2, self._start_failure())
                continue
            now = time.monotonic()
            self.deaths[role] = [t for t in self.deaths[role] if now - t < CRASH_LOOP_WINDOW] + [now]
            if len(self.deaths[role]) >= CRASH_LOOP_DEATHS:
                self._stop_all(
                    1,
                    f"regionlock: error: {role} processes died {len(self.deaths[role])} times within "
                    f"{CRASH_LOOP_WINDOW:.0f}s (the last, {pid}: {_how(code)}); stopping, see the log above",
                )
                continue
            self._restart(role, pid, code, started, slot)
        return self.exit_code

    def _restart(self, role: str, pid: int, code: int, started: float, slot: int | None) -> None:
        how = _how(code)
        self.failures[role] = self.failures[role] + 1 if time.monotonic() - started < 10 else 1
        delay = min(_RESTART_BACKOFF_MAX, 0.1 * 2 ** (self.failures[role] - 1))
        log.error("%s process %d died (%s); restarting it in %.1fs", role, pid, how, delay)
        end = time.monotonic() + delay
        while time.monotonic() < end and not self.stopping:
            time.sleep(0.05)
        if not self.stopping:
            self.spawn(role, slot)


def _how(code: int) -> str:
    return f"exit code {code}" if code >= 0 else f"signal {signal.Signals(-code).name}"


def worker_cpu(slot: int | None, workers: int, cpu_affinity: str) -> int | None:
    """The CPU that DeviceCheck worker `slot` runs on, or None to leave it to the kernel.

    With "auto" and at least as many allowed CPUs as workers, worker i gets the i-th: the hand-offs of each
    call between grpcio's threads are then wake-ups on the same CPU, without inter-processor interrupts and
    with warm caches (measured: about 20% less server CPU per call and a 4x lower median latency at a fixed
    load; benchmarks/RESULTS.md). With fewer CPUs, pinning would stack workers on one, so none is pinned.
    """
    if slot is None or cpu_affinity != "auto" or not hasattr(os, "sched_getaffinity"):
        return None
    allowed = sorted(os.sched_getaffinity(0))
    return allowed[slot] if len(allowed) >= workers else None


def pin_worker(slot: int | None, workers: int, cpu_affinity: str) -> None:
    """Run this process on worker_cpu(...), if any; call it in a new child before any thread starts, so that
    all its threads inherit the CPU."""
    cpu = worker_cpu(slot, workers, cpu_affinity)
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})


def _mark_dead(pid: int) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


def _exit_with_parent() -> None:
    """Ask Linux to send this process SIGTERM when the supervisor dies, so no worker is orphaned."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
    except (OSError, AttributeError):
        log.warning("workers can't follow the supervisor's death on this platform")


def run_child(settings: Settings, role: str, errors_fd: int | None = None) -> int:
    """The body of one forked process: serve its role until SIGTERM, reload on SIGHUP.

    A failure to start (the store, the token file, a listener) is written as one line to `errors_fd` and
    ends the process with START_FAILED, which stops the supervisor: restarting would fail the same way."""
    try:
        return _run_child(settings, role)
    except _StartFailed as exc:
        if errors_fd is None:
            raise
        log.debug("%s process %d failed at start", role, os.getpid(), exc_info=True)
        os.write(errors_fd, f"regionlock: error: {exc}\n".encode()[:4000])  # below PIPE_BUF: written at once
        return START_FAILED


class _StartFailed(Exception):
    """A process could not start: its message is the one line the supervisor prints."""


def _run_child(settings: Settings, role: str) -> int:
    from regionlock.service.errors import ServiceError
    from regionlock.service.server.auth import TokenFileError
    from regionlock.service.server.instance import AddressInUse
    from regionlock.service.server.lifecycle import Service, freeze_startup_objects, reload_in_background

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the supervisor decides
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the first load below, which reads the newest files
    _exit_with_parent()
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _HANDLED)
    if stop.is_set():
        return 0
    try:
        if role == ADMIN:
            supervisor = os.getppid()
            service = Service(settings, serve_check=False, on_reloaded=lambda: os.kill(supervisor, signal.SIGUSR1))
            from prometheus_client import CollectorRegistry, multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            service.start(metrics_registry=registry)
            if port_of(settings.admin_addr) == 0:
                InstanceLock().claim("admin_addr", settings.admin_addr, service.admin_port)
        else:
            service = Service(settings, serve_admin=False, reuse_port=True)
    except (ServiceError, TokenFileError, AddressInUse, OSError, RuntimeError) as exc:
        raise _StartFailed(exc.strerror or str(exc) if isinstance(exc, OSError) else str(exc)) from exc
    try:
        snapshot = service.reload()
    except ServiceError as exc:
        log.error("%s process %d can't load the data: %s", role, os.getpid(), exc.message)
        service.stop(0)
        return 1
    freeze_startup_objects()
    if role == CHECK:
        # join the shared port only now: the kernel would hand a worker still loading its share of connections
        service.start()
    signal.signal(signal.SIGHUP, lambda *_: reload_in_background(service))
    if role == ADMIN and settings.uses_embedded_data:
        from regionlock.service.server.embedded import print_examples

        print_examples(settings, snapshot, int(settings.check_addr.rpartition(":")[2]), service.admin_port)
    stop.wait()
    service.stop()
    return 0


def _memory_backed_dir() -> str | None:
    """/dev/shm when it is there: every check writes the workers' metrics through mmap, and on a disk-backed
    file system the kernel keeps writing those pages back and faulting on the next write to each (measured:
    unary throughput 84% of the echo baseline with the files in /tmp on ext4, 97% in /dev/shm)."""
    shm = "/dev/shm"
    return shm if os.path.isdir(shm) and os.access(shm, os.W_OK | os.X_OK) else None


def claim_listeners(settings: Settings) -> tuple[str, InstanceLock, socket.socket]:
    """One instance per port: lock both listeners and check they can be bound, before anything else; return
    the DeviceCheck address (its port chosen, for port 0), the lock and the bound DeviceCheck socket."""
    lock = InstanceLock(accept_in_thread=False)
    reservation: socket.socket | None = None
    try:
        lock.claim("check_addr", settings.check_addr)
        lock.claim("admin_addr", settings.admin_addr)
        if port_of(settings.admin_addr) != 0:
            check_bindable("admin_addr", settings.admin_addr, reuse_port=False).close()
        check_addr, reservation = reserve_port(settings.check_addr)
        lock.claim("check_addr", check_addr, port_of(check_addr) if port_of(settings.check_addr) == 0 else 0)
    except BaseException:
        lock.close()
        if reservation is not None:
            reservation.close()
        raise
    return check_addr, lock, reservation


def serve_workers(
    settings: Settings, workers: int, claimed: tuple[str, InstanceLock, socket.socket] | None = None
) -> int:
    """Serve with `workers` DeviceCheck processes and one Admin process; return the exit code."""
    check_addr, lock, reservation = claimed or claim_listeners(settings)
    remove_leftovers(_memory_backed_dir())  # those of instances killed before they could remove them
    metrics_dir = instance_dir(METRICS_PREFIX, _memory_backed_dir())
    # every process loads the data files itself, after the fork: without sharing, N + 1 copies of the same bytes
    shared_dir = instance_dir(DATA_PREFIX, _memory_backed_dir())
    share_loaded_files(shared_dir)
    # must be set before prometheus_client is imported in this process, so the children inherit it
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    import dataclasses

    settings = dataclasses.replace(settings, check_addr=check_addr)
    try:
        log.info("DeviceCheck on %s with %d worker processes; their metrics in %s", check_addr, workers, metrics_dir)
        return Supervisor(settings, workers, lock).run()
    finally:
        reservation.close()
        lock.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)
        shutil.rmtree(shared_dir, ignore_errors=True)
