"""The core never imports the dashboard: only ``conveyor dashboard`` does, when it runs."""

from __future__ import annotations

import subprocess
import sys


def test_the_core_and_the_cli_do_not_import_the_dashboard() -> None:
    code = ("import sys, conveyor, conveyor.app, conveyor.worker, conveyor.cli, conveyor.dlq, "
            "conveyor.control, conveyor.canvas, conveyor.testing\n"
            "from conveyor.cli import cli\n"
            "cli.list_commands(None)\n"
            "print(sorted(m for m in sys.modules if m.startswith(('conveyor.contrib', "
            "'starlette', 'uvicorn', 'prometheus_client'))))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    assert done.stdout.strip() == "[]", done.stdout
