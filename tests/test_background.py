"""Background loops wake on their work (kernel.background): a nudge runs a round at once, a
session's nudge is sent only when it commits, rounds follow each other quickly only while
there is work, and an idle loop does not poll faster than its idle interval."""
from __future__ import annotations

import threading

import pytest
from sqlalchemy import text

from kernel.background import Periodic, nudge, nudge_after_commit
from kernel.db import get_engine, session_scope

pytestmark = pytest.mark.nodb

IDLE = 60.0  # far longer than any wait below: a round that happens was woken, not polled


class Loop(Periodic):
    name = "test-loop"
    wakes_on = ("test-topic",)

    def __init__(self, interval: float = 0.01, idle_interval: float = IDLE, work: int = 0):
        super().__init__(interval, idle_interval)
        self.work = work  # rounds that still find something to do
        self.round_done = threading.Condition()

    def run_once(self) -> int:
        with self.round_done:
            self.round_done.notify_all()
        if self.work:
            self.work -= 1
            return 1
        return 0

    def wait_rounds(self, count: int, timeout: float = 10.0) -> bool:
        with self.round_done:
            return self.round_done.wait_for(lambda: self.rounds >= count, timeout)


@pytest.fixture()
def loop():
    loops: list[Loop] = []

    def make(**kw) -> Loop:
        made = Loop(**kw)
        made.start()
        loops.append(made)
        return made

    yield make
    for made in loops:
        made.stop()


def test_a_nudge_runs_a_round_of_an_idle_loop_at_once(loop):
    idle = loop()
    nudge("another-topic")
    nudge("test-topic")
    assert idle.wait_rounds(1), "the nudged loop ran no round"
    nudge("test-topic")
    assert idle.wait_rounds(2), "a second nudge ran no second round"


def test_rounds_follow_each_other_while_they_find_work_then_the_loop_waits(loop):
    worker = loop(work=5)
    nudge("test-topic")
    # one nudge: the round that found work is followed by the next without any further nudge,
    # until a round finds nothing (the sixth)
    assert worker.wait_rounds(6)
    assert worker.work == 0
    assert not worker.wait_rounds(7, timeout=0.3), "an idle loop polled before its idle interval"


def test_busy_asks_for_another_round_soon():
    class Held(Loop):
        def run_once(self) -> int:
            self.busy = self.rounds < 3  # e.g. a log another process integrates right now
            return super().run_once()

    held = Held()
    held.start()
    try:
        nudge("test-topic")
        assert held.wait_rounds(3)
    finally:
        held.stop()


def test_without_nudges_the_loop_still_runs_every_idle_interval(loop):
    polled = loop(idle_interval=0.05)
    assert polled.wait_rounds(3), "work another process queued would never be found"


def test_a_stopped_loop_is_no_longer_woken():
    class Counted(Loop):
        woken = 0

        def wake(self) -> None:
            self.woken += 1
            super().wake()

    running, stopped = Counted(), Counted()
    running.start()
    stopped.start()
    stopped.stop()
    try:
        nudge("test-topic")
        assert (running.woken, stopped.woken) == (1, 0)
    finally:
        running.stop()


def test_a_session_nudges_when_it_commits_and_not_when_it_rolls_back(tmp_path, loop):
    url = f"sqlite:///{tmp_path / 'nudge.db'}"
    with get_engine(url).begin() as conn:
        conn.execute(text("CREATE TABLE t (x INTEGER)"))
    woken = loop()

    with pytest.raises(RuntimeError), session_scope(url) as db:
        db.execute(text("INSERT INTO t VALUES (1)"))
        nudge_after_commit(db, "test-topic")
        raise RuntimeError("the work failed: nothing was committed, nothing to wake for")
    with session_scope(url) as db:  # a later commit of the same kind carries no stale nudge
        db.execute(text("INSERT INTO t VALUES (2)"))
    assert not woken.wait_rounds(1, timeout=0.3)

    with session_scope(url) as db:
        db.execute(text("INSERT INTO t VALUES (3)"))
        nudge_after_commit(db, "test-topic")
        assert not woken.wait_rounds(1, timeout=0.2), "woken before the commit"
    assert woken.wait_rounds(1)
