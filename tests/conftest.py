"""Test-wide fixtures: the throwaway server fixtures of every driver family."""

pytest_plugins = ["tests.servers.redis", "tests.servers.postgres", "tests.servers.mysql"]
