"""Workflows, as in Celery's canvas: signatures, chain, group, chord, callbacks.

``from conveyor import chain, group, chord, signature`` (or ``from conveyor.canvas import
...``). Modules: :mod:`~conveyor.canvas.signature` (the unit and its JSON form),
:mod:`~conveyor.canvas.workflows` (chain, group, chord), :mod:`~conveyor.canvas.engine`
(ids, sending, messages), :mod:`~conveyor.canvas.join` (chord joins, failures passed down),
:mod:`~conveyor.canvas.followups` (what the worker calls),
:mod:`~conveyor.canvas.eager` (in-process runs), :mod:`~conveyor.canvas.tree` (a workflow's
tree for ``conveyor result``).
"""

from conveyor.canvas.signature import Signature, maybe_signature, signature
from conveyor.canvas.workflows import chain, chord, group

subtask = signature

__all__ = ["Signature", "chain", "chord", "group", "maybe_signature", "signature", "subtask"]
