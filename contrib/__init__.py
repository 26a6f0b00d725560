"""Optional integrations that are not part of the core."""
