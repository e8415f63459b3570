"""Admin over TLS and mutual TLS, with certificates the test generates with openssl."""

import dataclasses
import subprocess
from pathlib import Path

import grpc
import pytest

from regionlock.admin.v1 import admin_pb2 as apb
from regionlock.admin.v1 import admin_pb2_grpc as apb_grpc
from regionlock.service.server.auth import create_token


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        cwd=d,
    )
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name, ext in (("server", ["-extfile", "san.ext"]), ("client", [])):
        _openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            f"/CN={name}",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            cwd=d,
        )
        _openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            f"{name}.pem",
            *ext,
            cwd=d,
        )
    return d


def _serve(settings):
    from regionlock.service.server.lifecycle import Service

    token = create_token(settings.tokens_path, "alice", "operator")
    service = Service(settings)
    service.start()
    return service, token


def _status(channel, token):
    return apb_grpc.AdminServiceStub(channel).GetStatus(
        apb.GetStatusRequest(), metadata=[("authorization", f"Bearer {token}")], timeout=5
    )


def test_tls(world, pki):
    settings = dataclasses.replace(world, admin_tls_cert=pki / "server.pem", admin_tls_key=pki / "server.key")
    service, token = _serve(settings)
    try:
        target = f"127.0.0.1:{service.admin_port}"
        credentials = grpc.ssl_channel_credentials(root_certificates=(pki / "ca.pem").read_bytes())
        with grpc.secure_channel(target, credentials) as channel:
            assert _status(channel, token).start_time.seconds > 0
        with grpc.insecure_channel(target) as channel, pytest.raises(grpc.RpcError) as info:
            _status(channel, token)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        service.stop(0)


def test_mutual_tls(world, pki):
    settings = dataclasses.replace(
        world,
        admin_tls_cert=pki / "server.pem",
        admin_tls_key=pki / "server.key",
        admin_tls_client_ca=pki / "ca.pem",
    )
    service, token = _serve(settings)
    try:
        target = f"127.0.0.1:{service.admin_port}"
        root = (pki / "ca.pem").read_bytes()
        with_client_cert = grpc.ssl_channel_credentials(
            root_certificates=root,
            private_key=(pki / "client.key").read_bytes(),
            certificate_chain=(pki / "client.pem").read_bytes(),
        )
        with grpc.secure_channel(target, with_client_cert) as channel:
            assert _status(channel, token).start_time.seconds > 0
        without = grpc.ssl_channel_credentials(root_certificates=root)
        with grpc.secure_channel(target, without) as channel, pytest.raises(grpc.RpcError) as info:
            _status(channel, token)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        service.stop(0)
