"""Peak memory of a training run, for ``compare``'s table.

What is measured depends on the device (the name goes into ``summary.json`` as
``memory_kind``):

- ``cuda_max_allocated``: ``torch.cuda.max_memory_allocated`` since the run started, i.e. the
  tensors the run held at its peak (not the caching allocator's reserve, not other processes);
- ``peak_rss``: on Linux, the process's peak resident set size (``VmHWM``) since the run
  started; the counter is reset at the start through ``/proc/self/clear_refs``. It includes the
  Python/torch baseline and data held in memory, not just the model;
- ``peak_rss_process``: elsewhere (macOS, or a kernel that refuses the reset) the peak RSS of
  the whole process so far (``getrusage``), which for the second run of a ``compare`` also
  covers the runs before it.
"""

from __future__ import annotations

import re
import resource
import sys
from pathlib import Path

import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def reset_peak_memory(device: torch.device) -> str:
    """Start a new peak measurement on ``device``; returns the kind that will be measured."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return "cuda_max_allocated"
    try:
        _CLEAR_REFS.write_text("5")  # 5: reset the peak RSS (VmHWM) to the current RSS
        return "peak_rss"
    except OSError:
        return "peak_rss_process"


def peak_memory_mb(device: torch.device, kind: str) -> float:
    """Peak memory in MiB since ``reset_peak_memory`` returned ``kind``."""
    if kind == "cuda_max_allocated":
        return torch.cuda.max_memory_allocated(device) / 2**20
    if kind == "peak_rss":
        match = re.search(r"VmHWM:\s+(\d+) kB", _STATUS.read_text())
        if match:
            return int(match.group(1)) / 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024
