"""A local worker process: runs the cells its parent sends, one at a time, and reports back.

Started by the local executor as ``python -m clbench.executors.worker``. It
reads one task per line on stdin (base64 of a pickled CellTask; an empty line
or end of input ends it) and writes JSON lines on its own copy of stdout:
``ready``, the cell's events, then ``outcome``. Everything else the process
prints goes to stderr, which the parent shows prefixed with the worker's number.
"""
from __future__ import annotations

import base64
import json
import os
import pickle
import signal
import sys


def _terminate(signum, frame):
    raise KeyboardInterrupt


def main() -> int:
    channel = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)  # stray prints from methods or libraries must not corrupt the channel
    signal.signal(signal.SIGTERM, _terminate)

    def send(message: dict) -> None:
        channel.write(json.dumps(message) + "\n")

    from clbench.cell_task import run_task
    from clbench.errors import UserError
    from clbench.plugins import get_plugins

    try:
        plugins = get_plugins()
        send({"event": "ready", "pid": os.getpid()})
        for line in sys.stdin.buffer:
            if not line.strip():
                break
            task = pickle.loads(base64.b64decode(line))  # from our parent's pipe only
            send({"event": "outcome", "outcome": run_task(task, send, plugins)})
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
