"""Prometheus collectors of the service, in one registry, and the HTTP listener that exposes them."""

from __future__ import annotations

import logging
import os
from collections import Counter as Tally
from collections.abc import Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.process_collector import ProcessCollector

log = logging.getLogger(__name__)

_LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    10,
)
_BATCH_BUCKETS = (1, 10, 100, 500, 1000, 2500, 5000, 10000, 50000, 100000)


# what each process publishes about itself (ProcessCollector's names, the pid added as a label)
_PROCESS_METRICS = {
    "process_resident_memory_bytes": "Resident memory size in bytes, by process.",
    "process_virtual_memory_bytes": "Virtual memory size in bytes, by process.",
    "process_cpu_seconds_total": "User and system CPU time spent in seconds, by process.",
    "process_open_fds": "Open file descriptors, by process.",
    "process_start_time_seconds": "Start time of the process since the epoch in seconds, by process.",
}


def package_version() -> str:
    """The installed package's version, from its metadata ("unknown" in a source tree never installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("regionlock")
    except PackageNotFoundError:
        return "unknown"


class Metrics:
    """The service's collectors; one instance per process, registered in its own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.decisions = Counter(
            "regionlock_decisions",
            "Decisions made, by verdict, reason and whether the verdict was enforced.",
            ["verdict", "reason", "enforced"],
            registry=r,
        )
        self.item_errors = Counter(
            "regionlock_check_item_errors",
            "Check items refused as invalid, by status code.",
            ["code"],
            registry=r,
        )
        self.rpc_latency = Histogram(
            "regionlock_rpc_duration_seconds",
            "Time spent in each RPC handler.",
            ["method"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.rpc_errors = Counter(
            "regionlock_rpc_errors",
            "RPCs that ended with an error status, by method and code.",
            ["method", "code"],
            registry=r,
        )
        self.batch_size = Histogram(
            "regionlock_batch_size", "Items per CheckDevices call.", buckets=_BATCH_BUCKETS, registry=r
        )
        self.snapshot_info = Gauge(
            "regionlock_snapshot_info",
            "The data versions now serving (value 1).",
            ["geo", "allowlist", "policy"],
            registry=r,
            multiprocess_mode="liveall",
        )
        self.snapshot_load_seconds = Gauge(
            "regionlock_snapshot_load_timestamp_seconds",
            "When the serving data was loaded.",
            registry=r,
            multiprocess_mode="liveall",
        )
        self.data_build_seconds = Gauge(
            "regionlock_data_build_timestamp_seconds",
            "When the serving data was built, by file: geo from its oldest MaxMind DB source's build_epoch "
            "(else when it was compiled), allowlist when it was compiled.",
            ["file"],
            registry=r,
            multiprocess_mode="liveall",
        )
        self.overrides_revision = Gauge(
            "regionlock_overrides_revision",
            "The override revision the check path has seen.",
            registry=r,
            multiprocess_mode="liveall",
        )
        self.overrides_staleness = Gauge(
            "regionlock_overrides_staleness_seconds",
            "Seconds since the override index last caught up with the store.",
            registry=r,
            multiprocess_mode="liveall",
        )
        # counted by the process that serves Admin only, so a reload across N workers counts once; the load at
        # start is not a reload (see Service.reload)
        self.reloads = Counter("regionlock_reloads", "Data reloads, by result.", ["result"], registry=r)
        self.build_info = Gauge(
            "regionlock_build_info",
            "The running build (value 1), by version (the installed package's).",
            ["version"],
            registry=r,
            multiprocess_mode="max",
        )
        self.build_info.labels(package_version()).set(1)
        # prometheus-client's multiprocess collector exports no process_* metrics, and its own collector would
        # describe only the scraped process: each process publishes its own, labelled with its pid
        # (in multiprocess mode the collector adds the pid label of a "liveall" gauge itself, and drops dead ones)
        self._pid_label = not os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        labels = ["pid"] if self._pid_label else []
        self._process_gauges = {
            name: Gauge(name, text, labels, registry=r, multiprocess_mode="liveall")
            for name, text in _PROCESS_METRICS.items()
        }
        self._process_source = ProcessCollector(registry=None)
        self.auth_failures = Counter(
            "regionlock_admin_auth_failures", "Admin calls refused, by status code.", ["code"], registry=r
        )
        self._serving_versions: tuple[str, str, str] | None = None
        self._latency_children: dict[str, Histogram] = {}
        self._decision_children: dict[tuple[int, int, bool], Counter] = {}

    def update_process(self) -> None:
        """Publish this process's memory, CPU time and open file descriptors (from /proc), labelled with its pid."""
        pid = str(os.getpid())
        for family in self._process_source.collect():
            for sample in family.samples:  # by the sample's name: a counter family's drops `_total`
                gauge = self._process_gauges.get(sample.name)
                if gauge is not None:
                    (gauge.labels(pid) if self._pid_label else gauge).set(sample.value)

    def observe_rpc(self, method: str, seconds: float) -> None:
        """Record one RPC's duration (labelled children cached: labels() takes a lock each call)."""
        child = self._latency_children.get(method)
        if child is None:
            child = self._latency_children[method] = self.rpc_latency.labels(method)
        child.observe(seconds)

    def count_decisions(self, decisions: Iterable[tuple[int, int, bool]]) -> None:
        """Count (verdict, reason, enforced) triples."""
        self.count_decision_totals(Tally(decisions))

    def count_decision_totals(self, totals: Mapping[tuple[int, int, bool], int]) -> None:
        """Count decisions given as totals per (verdict, reason, enforced): one increment per distinct triple."""
        for key, count in totals.items():
            (self._decision_children.get(key) or self._decision_child(key)).inc(count)

    def count_decision(self, verdict: int, reason: int, enforced: bool) -> None:
        """Count one decision (the unary path: no mapping built per call)."""
        key = (verdict, reason, enforced)
        (self._decision_children.get(key) or self._decision_child(key)).inc()

    def _decision_child(self, key: tuple[int, int, bool]) -> Counter:
        from regionlock.service.decision import Reason, Verdict

        verdict, reason, enforced = key
        child = self._decision_children[key] = self.decisions.labels(
            Verdict(verdict).name, Reason(reason).name, "true" if enforced else "false"
        )
        return child

    def serving(self, geo: str, allowlist: str, policy: str, loaded_at: float, revision: int) -> None:
        """Record the versions of the snapshot now serving."""
        versions = (geo, allowlist, policy)
        if versions != self._serving_versions:
            if self._serving_versions is not None:
                self.snapshot_info.remove(*self._serving_versions)
            self.snapshot_info.labels(*versions).set(1)
            self._serving_versions = versions
        self.snapshot_load_seconds.set(loaded_at)
        self.overrides_revision.set(revision)

    def data_built(self, geo: float | None, allowlist: float | None) -> None:
        """Record when the serving data files were built (a file without a build time leaves no sample)."""
        for file, built in (("geo", geo), ("allowlist", allowlist)):
            if built is None:
                try:
                    self.data_build_seconds.remove(file)
                except KeyError:
                    pass
            else:
                self.data_build_seconds.labels(file).set(built)


def start_metrics_listener(registry: CollectorRegistry, address: str) -> int:
    """Serve /metrics of a registry over HTTP on HOST:PORT (port 0 picks one); return the bound port."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"
    server, _thread = start_http_server(int(port), addr=host, registry=registry)
    bound = server.server_address[1]
    log.info("metrics on http://%s:%d/metrics", host, bound)
    return bound
