"""TerminationGuard with real signals, delivered to this process (SIGUSR1, so pytest never sees SIGTERM)."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from runlease_kfp.termination import Terminated, TerminationGuard

SIG = signal.SIGUSR1


def deliver(sig: int = SIG) -> None:
    """Send the signal to ourselves and give the interpreter a few bytecodes to run the handler."""
    os.kill(os.getpid(), sig)
    for _ in range(100):
        time.sleep(0.001)


@pytest.fixture()
def guard():
    previous = signal.getsignal(SIG)
    g = TerminationGuard(SIG)
    yield g
    signal.signal(SIG, previous)


def test_installed_only_while_held_and_previous_handler_restored(guard: TerminationGuard) -> None:
    seen: list[int] = []
    signal.signal(SIG, lambda signum, frame: seen.append(signum))
    guard.acquire()
    guard.acquire()
    assert guard.installed
    guard.release()
    assert guard.installed  # one lease still held
    with pytest.raises(Terminated) as stop:
        deliver()
    assert seen == [SIG]  # the earlier handler ran first
    assert stop.value.code == 128 + SIG and "SIGUSR1" in str(stop.value)
    guard.release()
    assert not guard.installed
    deliver()
    assert seen == [SIG, SIG]  # the earlier handler is back, alone


def test_signal_is_deferred_through_a_critical_section(guard: TerminationGuard) -> None:
    guard.acquire()
    try:
        with pytest.raises(Terminated):
            with guard.critical():
                deliver()  # revoking must not be cut in half
                survived = True
        assert survived
        with guard.critical(raise_pending=False):  # already unwinding: do not raise twice
            deliver()
    finally:
        guard.release()


def test_a_worker_threads_critical_section_does_not_defer_the_main_thread(guard: TerminationGuard) -> None:
    inside, leave = threading.Event(), threading.Event()

    def worker() -> None:
        with guard.critical():
            inside.set()
            leave.wait(10)

    guard.acquire()
    thread = threading.Thread(target=worker)
    thread.start()
    try:
        assert inside.wait(10)
        with pytest.raises(Terminated):
            deliver()
    finally:
        leave.set()
        thread.join(10)
        guard.release()


def test_an_ignored_signal_stays_ignored(guard: TerminationGuard) -> None:
    signal.signal(SIG, signal.SIG_IGN)
    guard.acquire()
    try:
        assert not guard.installed
        deliver()  # nothing happens
    finally:
        guard.release()
    assert signal.getsignal(SIG) == signal.SIG_IGN
