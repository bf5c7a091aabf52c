"""The built-in loggers: csv (always available), tensorboard, wandb and mlflow (optional extras, offline-capable)."""
from __future__ import annotations

import csv
import time

from clbench import hookimpl
from clbench.errors import require_extra

from . import Logger, step_accuracy


class CSVLogger(Logger):
    """One row per experience of every cell in RESULTS/steps.csv (appended, so resumed runs add to it)."""

    name = "csv"

    FIELDS = ["time", "cell_id", "method", "variant", "stream", "seed", "step", "seen_accuracy", "train_loss", "acc_row"]

    def __init__(self, results_dir, suite):
        super().__init__(results_dir, suite)
        self.path = self.results_dir / "steps.csv"
        self.results_dir.mkdir(parents=True, exist_ok=True)
        new = not self.path.exists()
        self.file = open(self.path, "a", newline="", encoding="utf-8")
        self.writer = csv.DictWriter(self.file, fieldnames=self.FIELDS)
        if new:
            self.writer.writeheader()

    def experience_end(self, report):
        cell = report.cell
        self.writer.writerow({
            "time": round(time.time(), 3), "cell_id": cell.cell_id, "method": cell.method, "variant": cell.variant,
            "stream": cell.stream_label, "seed": cell.seed, "step": report.step, "seen_accuracy": round(step_accuracy(report), 6),
            "train_loss": report.train_loss, "acc_row": " ".join("nan" if a is None else f"{a:.6f}" for a in report.acc_row),
        })
        self.file.flush()

    def close(self):
        self.file.close()


def _require(module: str, extra: str):
    return require_extra(module, extra, f"loggers: '{extra}'")


class TensorBoardLogger(Logger):
    """Scalars per cell under RESULTS/tensorboard/<cell_id>: seen accuracy and train loss per step, final metrics."""

    name = "tensorboard"

    def __init__(self, results_dir, suite):
        super().__init__(results_dir, suite)
        _require("tensorboard", "tensorboard")
        import torch

        torch.Tensor  # noqa: B018 -- loads a lazily imported torch fully before its submodule (else open_clip's import breaks)
        from torch.utils.tensorboard import SummaryWriter

        self.SummaryWriter = SummaryWriter
        self.writers = {}

    def _writer(self, cell):
        if cell.cell_id not in self.writers:
            self.writers[cell.cell_id] = self.SummaryWriter(str(self.results_dir / "tensorboard" / cell.cell_id))
        return self.writers[cell.cell_id]

    def experience_end(self, report):
        w = self._writer(report.cell)
        w.add_scalar("accuracy/seen", step_accuracy(report), report.step + 1)
        if report.train_loss is not None:
            w.add_scalar("train/loss", report.train_loss, report.step + 1)

    def cell_end(self, cell, record):
        w = self._writer(cell)
        for name, value in (record.get("metrics") or {}).items():
            if value is not None:
                w.add_scalar(f"metrics/{name}", value, 0)
        w.add_text("config", f"```\n{record.get('variant')} | {record.get('stream')} | seed {record.get('seed')}\n```")
        w.close()
        self.writers.pop(cell.cell_id, None)

    def close(self):
        for w in self.writers.values():
            w.close()


class WandbLogger(Logger):
    """One W&B run per cell; offline by default (WANDB_MODE=online to sync), files under RESULTS/wandb."""

    name = "wandb"

    def __init__(self, results_dir, suite):
        super().__init__(results_dir, suite)
        self.wandb = _require("wandb", "wandb")
        self.runs = {}

    def _run(self, cell):
        import os

        if cell.cell_id not in self.runs:
            self.runs[cell.cell_id] = self.wandb.init(
                project=f"clbench-{self.suite.name}", name=f"{cell.variant} | {cell.stream_label} | {cell.seed}",
                id=cell.cell_id, config=cell.config, dir=str(self.results_dir), reinit="create_new",  # cells may run side by side
                mode=os.environ.get("WANDB_MODE", "offline"),
            )
        return self.runs[cell.cell_id]

    def experience_end(self, report):
        self._run(report.cell).log({"accuracy/seen": step_accuracy(report), "step": report.step + 1})

    def cell_end(self, cell, record):
        run = self._run(cell)
        run.summary.update({k: v for k, v in (record.get("metrics") or {}).items() if v is not None})
        run.finish()
        self.runs.pop(cell.cell_id, None)


class MLflowLogger(Logger):
    """One MLflow run per cell in a local SQLite store (RESULTS/mlflow.db) unless MLFLOW_TRACKING_URI says otherwise.

    Runs are addressed by id through the tracking client, so cells that run side
    by side (worker processes, Ray, Slurm) log into their own runs.
    """

    name = "mlflow"

    def __init__(self, results_dir, suite):
        super().__init__(results_dir, suite)
        import os

        mlflow = _require("mlflow", "mlflow")
        # MLflow 3 refuses new file stores (./mlruns); SQLite needs no server and `mlflow ui --backend-store-uri` reads it
        self.results_dir.mkdir(parents=True, exist_ok=True)
        uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(self.results_dir / 'mlflow.db').resolve()}"
        self.client = mlflow.tracking.MlflowClient(tracking_uri=uri)
        name = f"clbench-{suite.name}"
        found = self.client.get_experiment_by_name(name)
        self.experiment_id = found.experiment_id if found else self.client.create_experiment(name)
        self.runs = {}

    def _run_id(self, cell) -> str:
        if cell.cell_id not in self.runs:
            run = self.client.create_run(self.experiment_id, run_name=f"{cell.variant} | {cell.stream_label} | {cell.seed}")
            for key, value in {"method": cell.method, "variant": cell.variant, "stream": cell.stream_label, "seed": cell.seed}.items():
                self.client.log_param(run.info.run_id, key, value)
            self.runs[cell.cell_id] = run.info.run_id
        return self.runs[cell.cell_id]

    def experience_end(self, report):
        self.client.log_metric(self._run_id(report.cell), "accuracy_seen", step_accuracy(report), step=report.step + 1)

    def cell_end(self, cell, record):
        run_id = self._run_id(cell)
        for key, value in (record.get("metrics") or {}).items():
            if value is not None:
                self.client.log_metric(run_id, key, value)
        self.client.set_terminated(run_id, status="FINISHED" if record.get("status") == "done" else "FAILED")
        self.runs.pop(cell.cell_id, None)

    def close(self):
        for run_id in self.runs.values():
            self.client.set_terminated(run_id, status="KILLED")
        self.runs = {}


@hookimpl
def clbench_add_loggers(register):
    register(CSVLogger)
    register(TensorBoardLogger)
    register(WandbLogger)
    register(MLflowLogger)
