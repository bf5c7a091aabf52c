"""A cell with ``train.devices: N > 1``: launched as N ranks by torchrun, and what each rank runs.

The process that would run the cell (this one, a local worker, a Ray task, a Slurm job) holds the
cell's lock and launches ``python -m torch.distributed.run --standalone --nproc-per-node N -m
clbench.rank_group FOLDER`` on its own node: PyTorch's own launcher (torchrun) starts the ranks,
gives them the group's address, and stops them all when one fails. Each rank runs ``run_cell``
(clbench/runner.py) inside the group; rank 0 writes the checkpoints and sends the experience
reports (a JSON line each in ``FOLDER/events.jsonl``), and the cell's record comes back in
``FOLDER/rank0.json``.

One unit: a rank that raises ends its cell with a failed record (the error of the lowest rank
that wrote one), and torchrun stops the others. A rank that dies without a word (killed, out of
memory, node trouble) makes the whole group go: it is launched again, up to ``RETRIES`` times,
and resumes from the last experience saved; after that the cell gets a failed record whose
checkpoint ``--retry-failed`` resumes. A checkpoint holds no rank-specific state, so the cell
also resumes on another number of devices.
"""
from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Callable

RETRIES = 2  # launches of a group after its first one lost a rank


def torchrun_command(devices: int, folder: Path) -> list[str]:
    """The command that starts the cell's ranks on this node (torchrun; ``--standalone`` picks a free port)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", f"--nproc-per-node={devices}",
            "--max-restarts=0", "--monitor-interval=0.5", "-m", "clbench.rank_group", str(folder)]


def run_cell_on_ranks(cell, devices: int, checkpoints: Path, report: Callable[[dict], None]) -> dict:
    """The record of ``cell`` run as ``devices`` ranks; ``report`` gets each experience message of rank 0.

    UserError when a rank found bad input; a failed record when the group failed or kept losing ranks.
    """
    from .errors import UserError
    from .runner import lost_record

    folder = Path(checkpoints).parent / "ranks" / cell.cell_id
    last_words = ""
    try:  # the folder goes however the group ends (done, failed, interrupted): the checkpoint is what resumes a cell
        for attempt in range(RETRIES + 1):
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            (folder / "task.pkl").write_bytes(pickle.dumps({"cell": cell, "checkpoints": str(checkpoints)}))
            code, last_words = _launch(devices, folder, report)
            outcomes = _outcomes(folder, devices)
            if outcomes:
                rank, outcome = outcomes[0]
                if outcome.get("user_error"):
                    raise UserError(outcome["user_error"])
                record = outcome["record"]
                if rank and record.get("error"):
                    record["error"] = f"rank {rank}: {record['error']}"
                return record
            if attempt < RETRIES:
                print(f"clbench: cell {cell.cell_id}: its group of {devices} ranks lost a rank ({_describe(code)}); "
                      f"launching it again to resume from its last checkpoint", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return lost_record(cell, f"RanksDied: the cell's group of {devices} ranks lost a rank {RETRIES + 1} times "
                             f"({_describe(code)}; {last_words}); rerun with --retry-failed to resume it")


def _describe(code: int) -> str:
    from .executors.local import describe_exit

    return f"torchrun {describe_exit(code)}"


def _launch(devices: int, folder: Path, report) -> tuple[int, str]:
    """Run torchrun until it ends, passing rank 0's events to ``report`` as they come; (exit code, its last lines)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    # the ranks share this node's CPU threads (torchrun would give each one thread)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // devices)))
    # DDP's C++ side warns on every fit that find_unused_parameters found every parameter used; errors still show
    env.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
    proc = subprocess.Popen(torchrun_command(devices, folder), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                            preexec_fn=_stop_with_parent if sys.platform.startswith("linux") else None)
    tail: deque[str] = deque(maxlen=8)

    def relay():  # the ranks' own output goes to this process's stderr, as a worker's does
        for line in proc.stdout:
            text = line.decode(errors="replace").rstrip()
            tail.append(text)
            print(text, file=sys.stderr, flush=True)

    reader = threading.Thread(target=relay, daemon=True)
    reader.start()
    events, seen = folder / "events.jsonl", 0
    try:
        while True:
            done = proc.poll() is not None
            seen = _relay_events(events, seen, report)
            if done:
                break
            time.sleep(0.2)
    finally:
        if proc.poll() is None:  # interrupted (Ctrl-C, the worker stopped): torchrun stops its ranks; checkpoints stay
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
    reader.join(timeout=5)
    return proc.returncode, " | ".join(line for line in tail if line.strip())[-600:]


def _stop_with_parent() -> None:
    """In torchrun's process before it starts (Linux): a SIGTERM when the process that launched it dies, even by
    SIGKILL, so no group outlives the cell's lock and keeps writing its checkpoints (prctl PR_SET_PDEATHSIG)."""
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not glibc: the group then ends when its output pipe breaks


def _relay_events(path: Path, seen: int, report) -> int:
    """Report the complete lines of ``path`` after byte ``seen``; the new offset."""
    try:
        with open(path, "rb") as f:
            f.seek(seen)
            data = f.read()
    except FileNotFoundError:
        return seen
    end = data.rfind(b"\n") + 1
    for line in data[:end].splitlines():
        if line.strip():
            report(json.loads(line))
    return seen + end


def _outcomes(folder: Path, devices: int) -> list[tuple[int, dict]]:
    """The ranks' written outcomes, lowest rank first."""
    found = []
    for rank in range(devices):
        path = folder / f"rank{rank}.json"
        if path.is_file():
            try:
                found.append((rank, json.loads(path.read_text())))
            except (OSError, ValueError):
                continue
    return found


# --- what each rank runs --------------------------------------------------------

def _peer_lost(record: dict) -> bool:
    """True when a failed record's error came out of a collective (another rank vanished: gloo's "Connection reset
    by peer", an NCCL abort): that rank's death, not this one's error, ended the cell, so this rank writes nothing
    and the group is launched again."""
    text = f"{record.get('error') or ''}\n{record.get('traceback') or ''}"
    return any(mark in text for mark in ("/torch/distributed/", "DistBackendError", "DistNetworkError", "DistError",
                                         "gloo", "NCCL", "ProcessGroup"))


def main(folder: str) -> int:
    """One rank: join the group, run the cell, write the outcome (rank 0, or any rank that failed)."""
    from .config import TrainConfig
    from .distributed import init_from_env, world
    from .errors import UserError
    from .learner import pick_device
    from .plugins import get_plugins
    from .results import atomic_write
    from .runner import run_cell

    here = Path(folder)
    task = pickle.loads((here / "task.pkl").read_bytes())  # written by our parent, run_cell_on_ranks
    cell = task["cell"]
    init_from_env(pick_device(TrainConfig(**cell.config["train"]).device).type)
    rank = world()[0]

    def write(outcome: dict) -> None:
        atomic_write(here / f"rank{rank}.json", lambda f: f.write(json.dumps(outcome)))

    def on_experience(report) -> None:  # rank 0 only (run_cell reports there alone)
        with open(here / "events.jsonl", "a") as f:
            f.write(json.dumps(report.message()) + "\n")

    try:
        record = run_cell(cell, get_plugins(), on_experience=on_experience, checkpoints=Path(task["checkpoints"]))
    except UserError as exc:
        write({"user_error": str(exc)})
        return 2
    failed = record.get("status") != "done"
    if rank == 0 and not failed or failed and not _peer_lost(record):
        write({"record": record})
    if failed:  # torchrun stops the other ranks, which may be waiting in a collective
        return 1
    import torch.distributed

    torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    code = main(sys.argv[1])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # no interpreter teardown: gloo's threads can abort it after the group is gone (SIGABRT)
