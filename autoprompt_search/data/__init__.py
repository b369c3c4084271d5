"""Tasks, data sources, tokenisation and batching."""

from .sources import DataConfig, Examples, TaskData, load_task_data
from .tasks import TASKS, Task, get_task
from .tokens import TokenizedSplit, tokenize

__all__ = [
    "TASKS",
    "DataConfig",
    "Examples",
    "Task",
    "TaskData",
    "TokenizedSplit",
    "get_task",
    "load_task_data",
    "tokenize",
]
