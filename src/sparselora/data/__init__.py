"""Tasks and their data: local copies first, the Hugging Face Hub as fallback."""

from sparselora.data import files, glue, gsm8k, imdb, wikitext  # noqa: F401  (register tasks)
from sparselora.data.registry import TaskData, TaskSpec, get_task, task_names
from sparselora.data.sources import DataNotFoundError

__all__ = ["DataNotFoundError", "TaskData", "TaskSpec", "get_task", "task_names"]
