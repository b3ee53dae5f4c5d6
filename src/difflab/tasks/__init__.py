"""Tasks on a trained model (one file each), run by the entry points at the repository root.

sample.py's editing tasks (``task=inpaint | img2img | anomaly``) go through :func:`run_task`.
"""

from difflab.tasks.common import TASKS, run_task

__all__ = ["TASKS", "run_task"]
