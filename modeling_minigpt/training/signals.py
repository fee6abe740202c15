"""Stopping cleanly on SIGTERM/SIGINT, and RNG isolation for evaluation."""

import contextlib
import os
import random
import signal
import threading

import numpy as np
import torch


class GracefulStop:
    """Turn SIGTERM and SIGINT into a flag the loop checks at each step boundary (it then saves and exits).

    A worker whose launcher died (its parent changed, e.g. ``accelerate launch`` was killed) also stops, so an
    orphan never keeps writing into a run that is being relaunched. A second SIGINT interrupts at once.
    """

    def __init__(self):
        self.signum: int | None = None
        self._parent = os.getppid()
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
        return False

    def _handle(self, signum, frame):
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    @property
    def requested(self) -> bool:
        if self.signum is None and os.getppid() != self._parent:
            self.signum = signal.SIGTERM  # orphaned: behave as if the launcher had forwarded SIGTERM
        return self.signum is not None

    @property
    def exit_code(self) -> int:
        """128 + signal number, the shell's convention (143 for SIGTERM, 130 for SIGINT)."""
        return 128 + (self.signum or 0)


@contextlib.contextmanager
def isolated_rng(seed: int):
    """Run the block with every RNG seeded to ``seed``, then restore the previous states."""
    py_state, np_state = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
