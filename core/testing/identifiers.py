"""Identifiers that trip drivers: case, separators, wildcards, path and key-space characters.

The contract uses them for queue names and task ids. A driver keeps every one of them apart
exactly (no two map to one key, row, file or queue) or, for queue names, refuses one with a
clear :class:`~conveyor.exceptions.ConfigurationError` / ``ValueRefusedError``. Task ids the
core accepts (:func:`conveyor.ids.check_task_id`: up to 255 printable characters) must all
be kept: producers may choose them.
"""

from __future__ import annotations

#: Appended to a fresh base name: each is a classic way for two names to become one.
SUFFIXES: tuple[str, ...] = (
    "",            # the base itself
    "-dlq",        # a driver's own dead-letter companion name
    "-dead",
    ":dead",       # key-space separators
    ".dead",
    "_x",          # SQL LIKE wildcards
    "%",
    "*",           # glob / KEYS / SCAN patterns
    "?",
    "[ab]",
    "{tag}",       # Redis Cluster hash tags
    "/sub",        # path separators and traversal
    "\\sub",
    "/../up",
    "//double",
    " ",           # trailing space (PAD SPACE collations compare it away)
    " inner space",
    "'quote\"",
    "\u00e9",      # é precomposed (NFC) ...
    "e\u0301",     # ... and decomposed (NFD): equal under some collations, not bytes
    "\U0001f600",  # four UTF-8 bytes (MySQL's 3-byte utf8 drops or refuses it)
)


def variants(base: str) -> list[str]:
    """``base`` with each of :data:`SUFFIXES`, plus ``base`` in upper case (``base`` must
    hold a lower-case letter, so case-insensitive stores merge the two)."""
    return [base + suffix for suffix in SUFFIXES] + [base.upper()]


def long_pair(base: str, length: int) -> tuple[str, str]:
    """Two ``length``-character names that differ only in their last character (a store that
    truncates makes them one)."""
    stem = (base + "-" + "L" * length)[:length - 1]
    return stem + "a", stem + "b"
