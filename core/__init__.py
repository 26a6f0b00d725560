"""conveyor: a distributed task queue with interchangeable brokers and result backends.

``from conveyor import Conveyor, chain, group`` is the whole API most applications need.
"""

from conveyor.app import Conveyor
from conveyor.canvas import Signature, chain, group, signature
from conveyor.result import AsyncResult, GroupResult
from conveyor.states import State
from conveyor.task import Task

__all__ = ["AsyncResult", "Conveyor", "GroupResult", "Signature", "State", "Task", "chain",
           "group", "signature"]
__version__ = "0.1.0"
