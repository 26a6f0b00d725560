"""Broker drivers shipped with conveyor. Each is imported only when its URL scheme is used."""
