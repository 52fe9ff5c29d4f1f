"""A worker process started as a fresh interpreter, for drivers that have threads.

``fork`` copies the whole driver, locks included: if another thread holds a lock at that moment
(the logging module's, a module's import lock, a lock in the user's own code), the child's copy is
held forever and the worker deadlocks the first time it needs it. A process with one thread cannot
be caught that way, so the processes engine forks only then (the common ``madhatter run``); with
other threads it starts workers here instead: ``fork`` followed at once by ``exec`` (done in C by
``subprocess``, which runs no Python code in between), so the worker shares nothing with the driver
but its socket, environment, working directory and ``sys.path``.

Why not ``multiprocessing``'s ``spawn`` or ``forkserver``? Both re-import the driver's
``__main__`` script in every worker, which re-runs a script that calls ``Pipeline.run()`` at top
level without an ``if __name__ == "__main__":`` guard; and a fork server keeps the environment of
the moment it started. A worker needs none of ``__main__``: step functions travel pickled.

:class:`FreshProcess` has the part of ``multiprocessing.Process``'s interface the engine uses.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from ._link import Link

STATE_VARIABLE = "MADHATTER_FRESH_WORKER"
"""What the worker needs from the driver, as JSON: its socket's descriptor, the driver's pid, and
the driver's ``sys.path`` and ``sys.argv`` (the user's modules import, and steps that read
``sys.argv`` see the same, as with ``fork``)."""

_BOOT = "from madhatter.engines._worker import fresh_worker_main; fresh_worker_main()"


class FreshProcess:
    """A worker interpreter serving tasks from its end of a :class:`Link`."""

    def __init__(self, link: Link, driver_pid: int) -> None:
        fd = link.fileno()
        state = {"fd": fd, "driver_pid": driver_pid, "sys_path": sys.path, "sys_argv": sys.argv}
        environment = dict(os.environ, **{STATE_VARIABLE: json.dumps(state)})
        self._popen = subprocess.Popen(
            [sys.executable, "-c", _BOOT],
            pass_fds=(fd,),
            stdin=subprocess.DEVNULL,
            env=environment,
            cwd=os.getcwd(),
        )
        self.pid = self._popen.pid
        self.sentinel = os.pidfd_open(self.pid)  # readable once the process has ended

    @property
    def exitcode(self) -> int | None:
        """As ``multiprocessing``'s: ``None`` while running, ``-N`` if killed by signal N."""
        return self._popen.poll()

    def is_alive(self) -> bool:
        return self._popen.poll() is None

    def kill(self) -> None:
        if self.is_alive():
            self._popen.kill()

    def join(self, timeout: float | None = None) -> None:
        try:
            self._popen.wait(timeout)
        except subprocess.TimeoutExpired:
            pass

    def close(self) -> None:
        """Release the sentinel; like ``multiprocessing``, refused while the process runs."""
        if self.is_alive():
            raise ValueError("cannot close a worker process that is still running")
        if self.sentinel >= 0:
            os.close(self.sentinel)
            self.sentinel = -1


AVAILABLE = hasattr(os, "pidfd_open")
"""Linux 5.3+: a process can be waited on through a descriptor, beside the workers' sockets."""
