"""Peak memory of a benchmark process (shared by the bench scripts, run as ``python bench/<name>.py``)."""

from __future__ import annotations

import resource
from pathlib import Path


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB: VmHWM of /proc/self/status on Linux (``ru_maxrss``
    would count the parent's peak too, as Linux keeps it across fork and exec), else ``ru_maxrss``."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
