"""A small corpus of hostile or careless input, shared by the driver and CLI tests.

Plain lists so any test can import them: ``from tests.hostile import IDS, TEXTS, VALUES``.
Every string here is something a producer could send; nothing here may crash a driver, loop a
message, or reach a terminal as markup or raw control characters.
"""

from __future__ import annotations

#: Task ids (and other identifiers) a store must keep or refuse with a clear error, never loop on.
IDS: list[str] = [
    "plain-id",
    "with space",
    "trailing space ",
    " leading space",
    "[/x]",
    "[bold red]alarm[/bold red]",
    "\x1b[31mred\x1b[0m",
    "line\nbreak",
    "tab\there",
    "carriage\rreturn",
    "nul\x00inside",
    "quote'single",
    'quote"double',
    "back\\slash",
    "percent%s%d",
    "semi;colon--",
    "unicode-é-ü-日本",
    "emoji-\U0001f600",
    "rtl-\u202eevil",
    "zero\u200bwidth",
    "P" * 300,
]

#: Free text (task names, reasons, args) that must be printed escaped.
TEXTS: list[str] = [
    "[/x]",
    "[bold red]BOLD[/]",
    "[link=http://evil.example]click[/link]",
    "\x1b[2J\x1b[Hcleared",
    "\x07bell",
    "\x08\x08\x08backspaced",
    "\u202eevil-rtl",
    "{braces} and %(percent)s",
    "nul\x00byte",
    "very long " * 200,
]

#: Opaque values (message bodies, results) including oversized ones.
VALUES: list[bytes] = [
    b"",
    b"\x00",
    b"\x00" * 64,
    b"\xff\xfe\xfd",
    b"[/x]",
    b"\x1b[31m",
    bytes(range(256)),
    b"x" * (1 << 20),
]

#: A value bigger than any default server packet / value limit we ship against (MariaDB 16 MiB).
OVERSIZED: bytes = b"o" * (20 << 20)
