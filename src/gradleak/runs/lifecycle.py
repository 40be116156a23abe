"""What every local sweep worker process runs first: it dies with its parent and leaves
Ctrl-C to the main process.

Standard library only: a spawned worker unpickles its initializer before anything else, so this
module must import fast for ``die_with_parent`` to take effect within milliseconds of the
worker's start (not after torch has been imported)."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time


def die_with_parent(parent: int) -> None:
    """Make this worker exit when the sweep's main process dies, even by SIGKILL."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # died before prctl took effect
        os._exit(1)

    def watchdog() -> None:  # fallback where prctl is missing (macOS) or the parent was re-parented
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watchdog, name="gradleak-parent-watchdog", daemon=True).start()


def init_worker(parent: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    die_with_parent(parent)
    # tqdm otherwise creates a multiprocessing lock (a named semaphore) in each worker; a worker
    # killed on Ctrl-C could not release it and Python would warn about "leaked semaphores".
    from tqdm.std import tqdm

    tqdm.set_lock(threading.RLock())
    # Plug-ins are imported by gradleak.runs.worker.execute (it gets the driver's list).
