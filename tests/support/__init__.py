"""Test support shared by every area: fixtures (registered as plugins by tests/conftest.py) and helpers.

geo, allowlist: data files built with the project's own builders; service: the small world, an in-process
server and `regionlock serve` subprocesses; postgres: private schemas and a TCP proxy to cut; mmdb_writer: MaxMind
DB files for the geo reader's tests; replica_fleet: clients of a fleet of replicas.
"""
