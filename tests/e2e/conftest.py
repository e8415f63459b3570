"""A fleet of three `regionlock serve` processes sharing one PostgreSQL schema, reached through a TcpProxy."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from regionlock.service.server.auth import create_token

from support.postgres import TcpProxy, private_schema, require_postgres, store_url
from support.replica_fleet import POLL_SECONDS, REPLICAS, Fleet, Replica
from support.service import start_server_process, stop_server_process, write_world


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """Three replicas on their own ports sharing one schema; the module's tests use distinct serials."""
    require_postgres()
    directory = tmp_path_factory.mktemp("fleet")
    settings = write_world(directory / "world")
    token = create_token(settings.tokens_path, "alice", "operator")
    proxy = TcpProxy()
    with private_schema() as schema:
        url = store_url(schema, port=proxy.port)
        flags = ("--store", url, "--override-poll-seconds", str(POLL_SECONDS))
        with ThreadPoolExecutor(REPLICAS) as pool:  # started together: they also race to migrate the schema
            starts = [pool.submit(start_server_process, settings, directory, *flags) for _ in range(REPLICAS)]
            processes = [start.result() for start in starts]
        replicas = [Replica(process, token) for process in processes]
        try:
            yield Fleet(replicas, proxy, schema)
        finally:
            for replica in replicas:
                replica.close()
            codes = [stop_server_process(process) for process in processes]
            proxy.close()
            assert codes == [0] * REPLICAS, "\n\n".join(p.log() for p in processes)
