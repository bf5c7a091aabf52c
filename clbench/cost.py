"""Cost meters: what a cell spent, so tables can show compute next to accuracy."""
from __future__ import annotations

import resource
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass

import lazy_loader as lazy

torch = lazy.load("torch")  # imported on first use (a cell that runs has loaded it already)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (MB)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


@dataclass
class CostMeter:
    train_images: int = 0
    train_seconds: float = 0.0
    eval_images: int = 0
    eval_seconds: float = 0.0

    def __post_init__(self):
        self.started = time.perf_counter()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()

    @contextmanager
    def timing(self, kind: str, device: torch.device):
        """Time a block; CUDA work is synchronised once at its end, never per step."""
        start = time.perf_counter()
        try:
            yield
        finally:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            setattr(self, f"{kind}_seconds", getattr(self, f"{kind}_seconds") + time.perf_counter() - start)

    def summary(self) -> dict:
        gpu = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else 0.0
        return {
            "wall_s": round(time.perf_counter() - self.started, 3),
            "train_img_per_s": round(self.train_images / self.train_seconds, 1) if self.train_seconds else None,
            "eval_img_per_s": round(self.eval_images / self.eval_seconds, 1) if self.eval_seconds else None,
            "train_images": self.train_images,
            "eval_images": self.eval_images,
            "peak_rss_mb": round(peak_rss_mb(), 1),
            "peak_gpu_mb": round(gpu, 1),
        }
