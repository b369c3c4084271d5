"""Tasks, data sources, tokenisation and batching."""

from autoprompt_search.data.sources import DataConfig, Examples, TaskData, load_task_data
from autoprompt_search.data.tasks import TASKS, Task, get_task
from autoprompt_search.data.tokens import TokenizedSplit, tokenize

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
