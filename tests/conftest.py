"""Shared pytest fixtures: each area keeps its fixtures in a plugin module beside this file."""

pytest_plugins = ["fixtures_service", "fixtures_allowlist"]
