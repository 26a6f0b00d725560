"""conveyor: a distributed task queue with interchangeable brokers and result backends.

``from conveyor import Conveyor, chain, group`` is the whole API most applications need.
"""

from conveyor.app import Conveyor
from conveyor.canvas import Signature, chain, chord, group, signature
from conveyor.result import AsyncResult, EagerResult, GroupResult, ResultSet
from conveyor.shared import shared_task
from conveyor.states import State
from conveyor.task import Task

__all__ = ["AsyncResult", "Conveyor", "EagerResult", "GroupResult", "ResultSet", "Signature",
           "State", "Task", "chain", "chord", "group", "shared_task", "signature"]
__version__ = "0.1.0"
