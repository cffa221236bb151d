"""Waiting for SIGINT/SIGTERM in CLI commands that block in HTTP reads (`watch`, `lock`).

A Python signal handler runs between bytecodes of the main thread. One that
raises KeyboardInterrupt (the default for SIGINT) is lost when the signal lands
after the interpreter's last check and before a blocking ``recv()`` begins: the
exception waits for the read to return, which for a blocking query is the agent's
next answer, minutes away. So the blocking work runs in a thread of its own and
the main thread waits in ``select`` on the signal wake-up pipe, which the C-level
handler writes the moment a signal arrives.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import threading
from typing import Callable, Iterator, TypeVar

T = TypeVar("T")


@contextlib.contextmanager
def signals_to_pipe(signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)) -> Iterator[int]:
    """While inside (main thread only): ``signals`` do nothing in Python, but each writes its number to the
    pipe whose read end this yields."""
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    previous = {sig: signal.signal(sig, lambda signum, frame: None) for sig in signals}
    old_fd = signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    try:
        yield wake_r
    finally:
        signal.set_wakeup_fd(old_fd)
        for sig, action in previous.items():
            signal.signal(sig, action)
        os.close(wake_r)
        os.close(wake_w)


def received(wake: int, timeout: float | None = 0) -> bytes:
    """The signals that arrived (each byte one signal number), waiting up to ``timeout`` for the first."""
    ready, _, _ = select.select([wake], [], [], timeout)
    return os.read(wake, 64) if ready else b""


def run_until_signal(fn: Callable[[], T], wake: int, name: str) -> tuple[T | None, int | None]:
    """Run ``fn`` in a daemon thread: (its result, None) when it ends first, (None, the last signal) when a
    signal does. An exception ``fn`` raises is raised here. After a signal the thread may still be blocked
    in a read; it ends with the process."""
    outcome: list[T] = []
    crashed: list[BaseException] = []
    done_r, done_w = os.pipe()

    def target() -> None:
        try:
            outcome.append(fn())
        except BaseException as err:  # handed to the waiting thread
            crashed.append(err)
        finally:
            os.write(done_w, b".")

    threading.Thread(target=target, name=name, daemon=True).start()
    ready, _, _ = select.select([wake, done_r], [], [])
    if wake in ready:
        return None, os.read(wake, 64)[-1]  # done_w stays open: the thread still writes it when it ends
    os.close(done_r)
    os.close(done_w)
    if crashed:
        raise crashed[0]
    return outcome[0], None
