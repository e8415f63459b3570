"""The auth interceptor through a real gRPC server on 127.0.0.1:0 with a stub AdminService."""

from __future__ import annotations

import logging
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

from regionlock.admin.v1 import admin_pb2, admin_pb2_grpc
from regionlock.service.errors import Unauthenticated
from regionlock.service.server.auth import AuthInterceptor, TokenStore, create_token, current_principal

ADMIN = admin_pb2.DESCRIPTOR.services_by_name["AdminService"]
READS = {"GetOverride", "ListOverrides", "ListAuditEvents", "GetStatus"}


class StubAdmin(admin_pb2_grpc.AdminServiceServicer):
    """Answers every method with an empty response and records who called."""

    def __init__(self):
        self.actors = []

    def __getattribute__(self, name):
        if name in ADMIN.methods_by_name:
            output = getattr(admin_pb2, ADMIN.methods_by_name[name].output_type.name)

            def handler(request, context):
                self.actors.append((name, current_principal().name))
                return output()

            return handler
        return super().__getattribute__(name)


@pytest.fixture
def secrets_(tmp_path):
    path = tmp_path / "tokens.json"
    return path, {
        "viewer": create_token(path, "vera", "viewer"),
        "operator": create_token(path, "otto", "operator"),
    }


@pytest.fixture
def server(secrets_):
    path, _ = secrets_
    denied = []
    servicer = StubAdmin()
    interceptor = AuthInterceptor(TokenStore.load(path), on_denied=denied.append)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), interceptors=[interceptor])
    admin_pb2_grpc.add_AdminServiceServicer_to_server(servicer, server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection([ADMIN.full_name, reflection.SERVICE_NAME], server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield channel, servicer, denied
    channel.close()
    server.stop(None)


def call(channel, method, secret=None):
    stub = admin_pb2_grpc.AdminServiceStub(channel)
    request = getattr(admin_pb2, ADMIN.methods_by_name[method].input_type.name)()
    metadata = [("authorization", f"Bearer {secret}")] if secret else []
    return getattr(stub, method)(request, metadata=metadata, timeout=10)


@pytest.mark.parametrize("method", sorted(ADMIN.methods_by_name))
def test_each_method_needs_the_right_role(server, secrets_, method):
    channel, servicer, denied = server
    _, secrets = secrets_
    with pytest.raises(grpc.RpcError) as caught:
        call(channel, method)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    call(channel, method, secrets["operator"])
    if method in READS:
        call(channel, method, secrets["viewer"])
        assert servicer.actors == [(method, "otto"), (method, "vera")]
        assert denied == ["UNAUTHENTICATED"]
    else:
        with pytest.raises(grpc.RpcError) as caught:
            call(channel, method, secrets["viewer"])
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "vera" in caught.value.details() and method in caught.value.details()
        assert servicer.actors == [(method, "otto")]
        assert denied == ["UNAUTHENTICATED", "PERMISSION_DENIED"]


def test_wrong_tokens_are_refused_and_secrets_never_logged(server, secrets_, caplog):
    channel, servicer, denied = server
    _, secrets = secrets_
    good = secrets["operator"]
    wrong = good[:-1] + ("A" if good[-1] != "A" else "B")
    with caplog.at_level(logging.DEBUG):
        for metadata in [
            [("authorization", f"Bearer {wrong}")],
            [("authorization", wrong)],
            [("authorization", f"Bearer {good}"), ("authorization", f"Bearer {good}")],
        ]:
            with pytest.raises(grpc.RpcError) as caught:
                admin_pb2_grpc.AdminServiceStub(channel).GetStatus(
                    admin_pb2.GetStatusRequest(), metadata=metadata, timeout=10
                )
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert good not in caught.value.details() and wrong not in caught.value.details()
        with pytest.raises(grpc.RpcError):
            call(channel, "SetOverride", secrets["viewer"])
        call(channel, "SetOverride", good)
    assert servicer.actors == [("SetOverride", "otto")]
    assert denied == ["UNAUTHENTICATED"] * 3 + ["PERMISSION_DENIED"]
    refused = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(refused) == 4
    for secret in (good, wrong, secrets["viewer"]):
        assert secret not in caplog.text and secret.split("_", 2)[2] not in caplog.text


def test_health_and_reflection_stay_open(server):
    channel, _, denied = server
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    responses = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
    )
    names = {s.name for r in responses for s in r.list_services_response.service}
    assert ADMIN.full_name in names
    assert denied == []


def test_outside_a_handler_there_is_no_principal():
    with pytest.raises(Unauthenticated):
        current_principal()
