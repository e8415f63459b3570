"""Shared pytest fixtures: each area keeps its fixtures in a plugin module beside this file."""

# in dependency order: a plugin must be registered before another one imports it
pytest_plugins = ["fixtures_geo", "fixtures_allowlist", "fixtures_service"]
