"""deploy/kubernetes.yaml parses and agrees with the code: ports, probes, config keys, the policy, the store Secret."""

from __future__ import annotations

import tomllib
from pathlib import Path, PurePosixPath

import pytest
import yaml

from regionlock.core.geo import GeoDatabase
from regionlock.service.policy import DataRegions, default_policy_text, parse_policy
from regionlock.service.server.lifecycle import CHECK_SERVICE
from regionlock.service.server.settings import FIELDS, Settings, load_settings

MANIFEST = Path(__file__).resolve().parent.parent / "deploy" / "kubernetes.yaml"


def _port(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


@pytest.fixture(scope="module")
def docs() -> dict[str, dict]:
    loaded = [doc for doc in yaml.safe_load_all(MANIFEST.read_text()) if doc]
    by_kind = {doc["kind"]: doc for doc in loaded}
    assert len(by_kind) == len(loaded), "one document of each kind"
    assert set(by_kind) == {"ConfigMap", "Service", "Deployment"}
    return by_kind


@pytest.fixture(scope="module")
def container(docs) -> dict:
    [main] = docs["Deployment"]["spec"]["template"]["spec"]["containers"]
    return main


@pytest.fixture(scope="module")
def config(docs, container, tmp_path_factory) -> Settings:
    """The settings a pod resolves from the ConfigMap's file (the environment it sets aside)."""
    env = {e["name"]: e for e in container["env"]}
    mounted = PurePosixPath(env["REGIONLOCK_CONFIG"]["value"])
    [mount] = [m for m in container["volumeMounts"] if PurePosixPath(m["mountPath"]) == mounted.parent]
    volumes = {v["name"]: v for v in docs["Deployment"]["spec"]["template"]["spec"]["volumes"]}
    assert volumes[mount["name"]]["configMap"]["name"] == docs["ConfigMap"]["metadata"]["name"]
    path = tmp_path_factory.mktemp("k8s") / mounted.name
    path.write_text(docs["ConfigMap"]["data"][mounted.name])
    assert set(tomllib.loads(path.read_text())) <= set(FIELDS)
    return load_settings(config_file=path, environ={})


def test_the_defaults_are_what_the_manifest_assumes():
    defaults = Settings()
    assert (_port(defaults.check_addr), _port(defaults.metrics_addr)) == (50051, 9464)


def test_container_service_and_config_agree_on_ports(docs, container, config):
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": _port(Settings().check_addr), "metrics": _port(Settings().metrics_addr)}
    assert (_port(config.check_addr), _port(config.metrics_addr)) == (ports["grpc"], ports["metrics"])
    assert config.metrics_addr.startswith("0.0.0.0:")  # scraped from outside the pod
    assert config.admin_addr == Settings().admin_addr  # Admin stays on the pod's loopback (port-forward)
    service = docs["Service"]
    assert service["spec"]["clusterIP"] == "None"  # headless, for client-side balancing
    assert service["spec"]["selector"] == docs["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert {p["name"]: p["targetPort"] for p in service["spec"]["ports"]} == {"grpc": "grpc", "metrics": "metrics"}
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == ports


def test_probes_use_the_native_grpc_health_check_on_the_check_port(container):
    port = _port(Settings().check_addr)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == port, probe
    assert container["readinessProbe"]["grpc"]["service"] == CHECK_SERVICE
    assert container["startupProbe"]["grpc"]["service"] == CHECK_SERVICE
    assert container["livenessProbe"]["grpc"].get("service", "") == ""  # the server as a whole


def test_several_replicas_share_a_postgresql_store_from_a_secret(docs, container, config):
    deployment = docs["Deployment"]
    assert deployment["spec"]["replicas"] >= 2
    env = {e["name"]: e for e in container["env"]}
    assert "REGIONLOCK_" + "store".upper() in env and "store" in FIELDS
    assert set(env["REGIONLOCK_STORE"]["valueFrom"]["secretKeyRef"]) == {"name", "key"}
    assert config.store is None  # not in the ConfigMap: the URL carries a password
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > config.grace_seconds


def test_the_pod_reads_the_files_the_config_names_from_its_mounts(docs, container, config):
    mounts = [PurePosixPath(m["mountPath"]) for m in container["volumeMounts"]]
    for path in (config.geo_path, config.allowlist_path, config.policy_path, config.tokens_path):
        assert PurePosixPath(path).parent in mounts, path
    parse_policy(docs["ConfigMap"]["data"][config.policy_path.name], "ConfigMap policy.toml")


def test_the_manifest_restricts_what_the_default_policy_restricts(docs, config, geolite2_db):
    text = docs["ConfigMap"]["data"][config.policy_path.name]
    data = DataRegions.of(geolite2_db.name, GeoDatabase.open(geolite2_db).regions)
    manifest = parse_policy(text, "ConfigMap policy.toml", data)  # every rule can match on a City database
    restricted = {region for rule in manifest.restricted for region in rule.regions}
    default = {region for rule in parse_policy(default_policy_text()).restricted for region in rule.regions}
    assert default <= restricted, f"the manifest drops {sorted(default - restricted)}"
    comments = " ".join(line for line in text.splitlines() if line.strip().startswith("#"))
    for region in sorted(restricted - default):  # and says why it restricts more
        assert f"({region})" in comments, region
