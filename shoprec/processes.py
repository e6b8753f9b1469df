"""Stopping a child process together with everything it started."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import psutil


def stop_process_group(process: subprocess.Popen, grace_seconds: float = 20.0) -> None:
    """Stop the whole process group of ``process`` (started with ``start_new_session=True``):
    SIGTERM alone leaves Airflow's scheduler and workers, or BentoML's workers, running. What
    the group started in process groups of its own (BentoML's workers) is killed with it when
    SIGTERM did not stop it: otherwise an orphaned worker keeps holding the port."""
    try:
        group = os.getpgid(process.pid)
    except ProcessLookupError:
        return
    below = descendants(process.pid)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if sig == signal.SIGKILL:
            kill_all(below)
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


def descendants(pid: int) -> list[psutil.Process]:
    """The living processes below ``pid``, also those that left its process group, as an
    Airflow task process or a BentoML worker does (each starts a session of its own)."""
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def kill_all(processes: list[psutil.Process]) -> None:
    """SIGKILL each of ``processes`` that still runs (psutil checks the start time: never a
    later process that got its pid)."""
    for process in processes:
        try:
            process.kill()
        except psutil.Error:
            pass
