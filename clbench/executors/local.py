"""local: run cells one after another in this process (the default)."""
from __future__ import annotations

from clbench import hookimpl


class LocalExecutor:
    name = "local"

    def __init__(self, workers: int = 1):
        if workers != 1:
            from clbench.errors import UserError

            raise UserError("--workers: the local executor runs one cell at a time in this process; use --workers 1")
        self.workers = workers

    def run(self, cells, run_one) -> None:
        for cell in cells:
            run_one(cell)


@hookimpl
def clbench_add_executors(register):
    register("local", LocalExecutor)
