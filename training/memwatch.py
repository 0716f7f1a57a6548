"""Peak memory of a block of work: the CUDA allocator's peak on a GPU, else the process RSS sampled."""

from __future__ import annotations

import threading
import time

import psutil
import torch


class MemoryWatch:
    """Context manager measuring the peak memory used *above* what was in use when it started (`peak_mb`),
    and the peak in all (`total_peak_mb`, what was already in use included: the frozen base's weights,
    which is where QLoRA saves memory and a delta cannot show it).

    On CUDA this is `torch.cuda.max_memory_allocated` (tensors only); on CPU a thread samples the
    process's resident set size every `interval` seconds (weights, activations, optimizer state, and
    allocator slack alike), so short spikes between samples can be missed.

    Example:
        >>> with MemoryWatch() as watch:
        ...     _ = bytearray(10_000_000)
        >>> watch.source
        'rss_delta'
    """

    def __init__(self, interval: float = 0.02):
        self.interval = interval
        self.source = "cuda_max_allocated" if torch.cuda.is_available() else "rss_delta"
        self.peak_mb = 0.0
        self.total_peak_mb = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> MemoryWatch:
        if self.source.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
            self._start = torch.cuda.memory_allocated()
            return self
        self._proc = psutil.Process()
        self._start = self._peak = self._proc.memory_info().rss
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, self._proc.memory_info().rss)
            time.sleep(self.interval)

    def __exit__(self, *exc) -> None:
        if self.source.startswith("cuda"):
            peak = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            if self._thread is not None:
                self._thread.join()
            peak = max(self._peak, self._proc.memory_info().rss)
        self.peak_mb = round((peak - self._start) / 2**20, 1)
        self.total_peak_mb = round(peak / 2**20, 1)
