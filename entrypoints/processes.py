"""Stopping a child process together with everything it started."""

from __future__ import annotations

import os
import signal
import subprocess
import time


def stop_process_group(process: subprocess.Popen, grace_seconds: float = 20.0) -> None:
    """Stop the whole process group of ``process`` (started with ``start_new_session=True``):
    SIGTERM alone leaves Airflow's scheduler and workers, or BentoML's workers, running."""
    try:
        group = os.getpgid(process.pid)
    except ProcessLookupError:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(group, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=grace_seconds)
            if not _group_alive(group):
                return
            time.sleep(1)
            if not _group_alive(group):
                return
        except subprocess.TimeoutExpired:
            pass


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
        return True
    except ProcessLookupError:
        return False
