"""Benchmarks that print figures (never asserted on in tests: timings vary by machine)."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

from s2e_lens.registry import PACKAGED_MODELS


@dataclass(frozen=True)
class LoadTimes:
    model: str
    import_seconds: float  # `import s2e_lens.loading` (torch, transformers, TransformerLens) in a new process
    cold_seconds: float  # empty cache: sha256 + dequantise + save + load + boot
    warm_seconds: list[float]  # cached checkpoint: load + boot, repeated

    def lines(self) -> list[str]:
        warm = statistics.median(self.warm_seconds)
        return [
            f"model                      {self.model}",
            f"import (new process)       {self.import_seconds:6.2f} s",
            f"cold load (empty cache)    {self.cold_seconds:6.2f} s",
            f"warm load (cached), median {warm:6.2f} s  over {len(self.warm_seconds)} runs "
            f"({', '.join(f'{t:.2f}' for t in self.warm_seconds)})",
            f"cold / warm                {self.cold_seconds / warm:6.1f} x",
        ]


def bench_load(name: str, repeats: int = 3) -> LoadTimes:
    """Time the first load of a packaged model into an empty cache, then cached loads."""
    if name not in PACKAGED_MODELS:
        raise ValueError(f"load benchmark needs a packaged model, one of {', '.join(PACKAGED_MODELS)}")
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import s2e_lens.loading"], check=True)
    import_s = time.perf_counter() - started

    from s2e_lens.loading import load_model

    saved = os.environ.get("S2E_CACHE")
    with tempfile.TemporaryDirectory(prefix="s2e-bench-cache-") as tmp:
        os.environ["S2E_CACHE"] = tmp
        try:
            started = time.perf_counter()
            load_model(name, progress=False)
            cold = time.perf_counter() - started
            warm = []
            for _ in range(repeats):
                started = time.perf_counter()
                load_model(name, progress=False)
                warm.append(time.perf_counter() - started)
        finally:
            if saved is None:
                os.environ.pop("S2E_CACHE", None)
            else:
                os.environ["S2E_CACHE"] = saved
    return LoadTimes(name, import_s, cold, warm)
