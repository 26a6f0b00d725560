"""The worker: reserves messages, runs tasks, stores outcomes, acks."""

from conveyor.worker.consumer import Consumer
from conveyor.worker.runner import TaskRunner

__all__ = ["Consumer", "TaskRunner"]
