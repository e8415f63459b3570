"""The per-instance directories of a multi-process server (its workers' metrics files and its shared data
files, in /dev/shm when it is there), named with the owning process's pid, so that the next start removes
those of instances that were killed before they could remove their own."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile

log = logging.getLogger(__name__)

METRICS_PREFIX = "regionlock-metrics-"
DATA_PREFIX = "regionlock-data-"
PREFIXES = (METRICS_PREFIX, DATA_PREFIX)


def instance_dir(prefix: str, parent: str | None) -> str:
    """A new directory PREFIX<pid>-<random> in `parent` (None: the temporary directory), owned by this process."""
    return tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=parent)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def remove_leftovers(parent: str | None) -> list[str]:
    """Remove the instance directories in `parent` (None: the temporary directory) whose owning process is
    gone (only this user's); return their paths. A directory of a live process, or one not named by
    instance_dir, is left alone."""
    parent = parent or tempfile.gettempdir()
    removed: list[str] = []
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return removed
    for entry in entries:
        prefix = next((p for p in PREFIXES if entry.name.startswith(p)), None)
        if prefix is None:
            continue
        pid_text, dash, _ = entry.name[len(prefix) :].partition("-")
        if not (dash and pid_text.isdigit()) or _alive(int(pid_text)):
            continue
        try:
            if not entry.is_dir(follow_symlinks=False) or entry.stat(follow_symlinks=False).st_uid != os.getuid():
                continue
        except OSError:
            continue
        shutil.rmtree(entry.path, ignore_errors=True)
        if not os.path.exists(entry.path):
            removed.append(entry.path)
    if removed:
        log.info("removed %d directories left by killed instances: %s", len(removed), ", ".join(sorted(removed)))
    return removed
