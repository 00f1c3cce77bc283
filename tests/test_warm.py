"""The warm parent (:mod:`memtune.proc.warm`): children forked from one process that loaded
the libraries once, measured as the budget counts them (a shared page once), and a fresh
child whenever the warm parent cannot serve. Real processes throughout; the page counts
are also checked against fake ``/proc`` files."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from memtune.probe import process
from memtune.proc import children, warm

MiB = 1024**2

# A module the warm parent loads (100 MiB of its own, touched) and two a child runs.
HELPERS = {
    "warmload.py": """
        import numpy as np
        HELD = None
        def load():
            global HELD
            HELD = np.ones(100 * 2**20 // 8)
    """,
    "warmchild.py": """
        import json, os, sys
        from memtune.proc import children
        children.die_with_parent()
        import warmload
        loaded = warmload.HELD is not None and float(warmload.HELD.sum()) == 100 * 2**20 / 8
        print(json.dumps({"pid": os.getpid(), "ppid": os.getppid(), "loaded": loaded,
                          "comm": open("/proc/self/comm").read().strip()}), flush=True)
        sys.stdin.read()  # held open until the test is done measuring
        print(json.dumps({"bye": True}))
        children.finish(0)
    """,
    # a warm parent's load that never ends: only a kill ends its process
    "warmstuck.py": """
        import time
        def load():
            time.sleep(600)
    """,
    # a child that ends only when killed: its stdin closing does not end it
    "warmsleep.py": """
        import json, os, time
        print(json.dumps({"pid": os.getpid(), "ppid": os.getppid()}), flush=True)
        time.sleep(120)
    """,
}

linux_only = pytest.mark.skipif(not Path("/proc/self/smaps_rollup").exists(), reason="Linux")


@pytest.fixture
def helpers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    for name, body in HELPERS.items():
        (tmp_path / name).write_text(textwrap.dedent(body))
    path = [str(tmp_path), *filter(None, [os.environ.get("PYTHONPATH")])]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(path))
    monkeypatch.delenv(warm.OFF_ENV, raising=False)
    yield tmp_path


def _first_line(child: children.Child) -> dict[str, object]:
    assert child.stdout is not None
    return json.loads(child.stdout.readline())


@linux_only
def test_a_child_forks_from_the_warm_parent_with_what_it_loaded(helpers: Path) -> None:
    with warm.scope(["warmload:load"]):
        child = warm.spawn("warmchild")
        assert isinstance(child, warm.WarmChild)
        try:
            hello = _first_line(child)
            server = warm._current
            assert server is not None
            assert hello["loaded"] is True  # loaded once, in the warm parent, before the fork
            assert hello["ppid"] == server.proc.pid and hello["pid"] == child.pid
            assert hello["comm"] == "warmchild"  # not the warm parent's name
            out, _ = child.communicate("", timeout=30)
        finally:
            children.reap(child)
        assert json.loads(out.strip().splitlines()[-1]) == {"bye": True}
        assert child.returncode == 0
        second = warm.spawn("warmchild")  # the same warm parent serves the next
        try:
            assert _first_line(second)["ppid"] == server.proc.pid
        finally:
            children.reap(second)
        assert second.returncode is not None
    assert server.proc.poll() is not None  # gone with its scope


@linux_only
def test_a_warm_parent_started_early_serves_the_first_fork(helpers: Path) -> None:
    """``start`` loads the warm parent before any child is asked for (its imports run beside
    the data scan); the first fork comes from that same process, once it has loaded."""
    with warm.scope(["warmload:load"]):
        warm.start()
        server = warm._current
        assert server is not None and server.proc.poll() is None
        warm.start()  # a second call starts no second warm parent
        assert warm._current is server
        child = warm.spawn("warmchild")
        try:
            hello = _first_line(child)
            assert hello["ppid"] == server.proc.pid and hello["loaded"] is True
            assert server.loaded
        finally:
            children.reap(child)
    assert server.proc.poll() is not None


@linux_only
def test_a_scope_ended_while_its_warm_parent_loads_kills_it(helpers: Path) -> None:
    """Started early and never needed (bad data fails the scan): the scope's end does not
    wait for the imports to finish, it kills the warm parent, which leaves no process."""
    with warm.scope(["warmstuck:load"]):
        warm.start()
        server = warm._current
        assert server is not None
        # the warm parent is in its load (its name set, the sleep begun) before the scope ends
        for _ in range(200):
            if process.WARM_NAME in Path(f"/proc/{server.proc.pid}/comm").read_text():
                break
            time.sleep(0.05)
        else:
            pytest.fail("the warm parent never started")
    assert not server.loaded
    assert server.proc.returncode == -signal.SIGKILL
    assert not Path(f"/proc/{server.proc.pid}").exists()


@linux_only
def test_the_warm_parent_becomes_a_child_that_must_share_no_page(helpers: Path) -> None:
    """A fresh child asked for while a warm parent is up: the warm parent itself runs it,
    after its forked child ended (no second import of what it loaded), memtune's own
    child, with nothing left shared; then the scope forks no more."""
    with warm.scope(["warmload:load"]):
        forked = warm.spawn("warmchild")
        server = warm._current
        assert server is not None
        _first_line(forked)
        forked.communicate("", timeout=30)
        children.reap(forked)
        became = warm.spawn("warmchild", fresh=True)
        try:
            assert isinstance(became, warm.Became) and became.pid == server.proc.pid
            hello = _first_line(became)
            assert hello["pid"] == server.proc.pid and hello["ppid"] == os.getpid()
            assert hello["loaded"] is True and hello["comm"] == "warmchild"
            assert not warm.active() and warm.private_held() == 0
            # counted once, as a process of its own: its pages are all its own now
            assert abs(process.tree_held(became.pid) - process.held(became.pid)) < 4 * MiB
            assert process.held(became.pid) > 100 * MiB
            out, _ = became.communicate("", timeout=30)
        finally:
            children.reap(became)
        assert json.loads(out.strip().splitlines()[-1]) == {"bye": True}
        assert became.returncode == 0
        after = warm.spawn("warmchild")
        try:
            assert isinstance(after, subprocess.Popen)  # started afresh from now on
        finally:
            children.reap(after)


@linux_only
def test_a_became_child_killed_mid_run_reads_as_killed(helpers: Path) -> None:
    with warm.scope(["warmload:load"]):
        warm.spawn("warmchild").communicate("", timeout=30)  # starts the warm parent
        became = warm.spawn("warmchild", fresh=True)
        assert isinstance(became, warm.Became)
        _first_line(became)
        children.reap(became)
        assert became.returncode == -9


@linux_only
def test_the_tree_counts_a_page_shared_with_a_forked_child_once(helpers: Path) -> None:
    """The warm parent's 100 MiB are shared with its child: the tree's sum counts them in
    the child alone, not twice (and not zero times)."""
    with warm.scope(["warmload:load"]):
        child = warm.spawn("warmchild")
        try:
            _first_line(child)
            server = warm._current
            assert server is not None
            process.forget_unshared(server.proc.pid)
            parent_own = process.unshared_held(server.proc.pid)
            whole = process.held(server.proc.pid)
            child_held = process.held(child.pid)
            tree = process.tree_held(server.proc.pid)
            assert whole > 100 * MiB and child_held > 100 * MiB  # each maps the array
            assert parent_own < whole - 90 * MiB  # ... but the parent counts only its own
            assert abs(tree - (parent_own + child_held)) < 8 * MiB
            assert warm.private_held() == process.unshared_held(server.proc.pid)
        finally:
            children.reap(child)


@linux_only
def test_a_warm_parent_that_cannot_start_leaves_a_fresh_child(helpers: Path) -> None:
    with warm.scope(["no_such_module_here:load"]):
        child = warm.spawn("warmchild")
        try:
            assert isinstance(child, subprocess.Popen)  # started afresh
            hello = _first_line(child)
            assert hello["ppid"] == os.getpid() and hello["loaded"] is False
        finally:
            children.reap(child)


def test_outside_a_scope_or_switched_off_every_child_starts_afresh(
    helpers: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert warm.fork("warmchild") is None
    monkeypatch.setenv(warm.OFF_ENV, "0")
    with warm.scope(["warmload:load"]):
        assert warm.fork("warmchild") is None


@linux_only
def test_reap_kills_a_forked_child_mid_run_and_learns_its_end(helpers: Path) -> None:
    with warm.scope(["warmload:load"]):
        child = warm.spawn("warmchild")
        _first_line(child)
        children.reap(child)
        assert child.returncode == -9
        assert not Path(f"/proc/{child.pid}").exists() or _zombie_free(child.pid)


@linux_only
def test_a_became_child_dies_with_memtune_killed_by_sigkill(helpers: Path) -> None:
    """memtune SIGKILLed while the warm parent runs a child as itself: nothing is left (the
    warm parent asked the kernel to kill it with memtune, and becoming keeps that)."""
    script = (
        "import json, sys\n"
        "from memtune.proc import warm\n"
        "with warm.scope(['warmload:load']):\n"
        "    warm.spawn('warmchild').communicate('', timeout=60)\n"
        "    became = warm.spawn('warmsleep', fresh=True)\n"
        "    print(json.dumps({'became': isinstance(became, warm.Became),"
        " 'hello': json.loads(became.stdout.readline())}), flush=True)\n"
        "    sys.stdin.read()\n"
    )
    memtune = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert memtune.stdout is not None
        told = json.loads(memtune.stdout.readline())
        assert told["became"] is True and told["hello"]["ppid"] == memtune.pid
        # A pidfd, opened while the child runs, turns readable when it ends (no pid reuse).
        child = os.pidfd_open(int(told["hello"]["pid"]))
        try:
            assert not select.select([child], [], [], 0)[0]  # running
            memtune.kill()
            memtune.wait(timeout=30)
            ended = select.select([child], [], [], 60)[0]  # the bound only guards a hang
            if not ended:
                signal.pidfd_send_signal(child, signal.SIGKILL)
            assert ended, "the became child outlived memtune"
        finally:
            os.close(child)
    finally:
        memtune.kill()
        memtune.wait(timeout=30)


def _zombie_free(pid: int) -> bool:
    try:
        return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True


def test_unshared_is_private_dirty_plus_page_tables_from_fake_files(tmp_path: Path) -> None:
    (tmp_path / "77").mkdir()
    (tmp_path / "77" / "status").write_text(
        "Name:\tmemtune-warm\nVmHWM:\t 700000 kB\nVmRSS:\t 650000 kB\nRssAnon:\t 260000 kB\n"
        "RssFile:\t 390000 kB\nRssShmem:\t 0 kB\nVmPTE:\t 2000 kB\n"
    )
    (tmp_path / "77" / "smaps_rollup").write_text(
        "Rss:             650000 kB\nPss_Anon:        140000 kB\n"
        "Shared_Dirty:    215000 kB\nPrivate_Dirty:    32000 kB\n"
    )
    (tmp_path / "77" / "comm").write_text("memtune-warm\n")
    process.forget_unshared(77)
    assert process.unshared_held(77, tmp_path) == (32000 + 2000) * 1024
    assert process._is_warm(77, tmp_path)
    (tmp_path / "77" / "smaps_rollup").unlink()  # no smaps_rollup: the whole held counts
    process.forget_unshared(77)
    assert process.unshared_held(77, tmp_path) == (260000 + 2000) * 1024


def test_unshared_reads_afresh_when_the_warm_parents_family_changes(tmp_path: Path) -> None:
    """A poll from outside (the benches) is told of no fork: a reading cached from before
    one would count the pages the parent now shares a second time, in its new child."""
    (tmp_path / "78").mkdir()
    (tmp_path / "78" / "status").write_text(
        "Name:\tmemtune-warm\nVmHWM:\t 700000 kB\nVmRSS:\t 650000 kB\nRssAnon:\t 260000 kB\n"
        "RssFile:\t 390000 kB\nRssShmem:\t 0 kB\nVmPTE:\t 2000 kB\n"
    )
    rollup = tmp_path / "78" / "smaps_rollup"
    rollup.write_text("Private_Dirty:   258000 kB\n")
    process.forget_unshared(78)
    assert process.unshared_held(78, tmp_path, (78,)) == (258000 + 2000) * 1024
    rollup.write_text("Private_Dirty:     4000 kB\n")  # forked: its pages are shared now
    assert process.unshared_held(78, tmp_path, (78, 79)) == (4000 + 2000) * 1024


@pytest.mark.slow
@linux_only
def test_suggest_forks_its_trials_and_model_reader_from_one_warm_parent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real plan: the trials and the model reader are the warm parent's children, and the
    plan is the same kind of plan (trials measured, none from a cache)."""
    import memtune

    seen: list[int] = []
    real = warm.Server.fork

    def counting(self: warm.Server, module: str) -> warm.WarmChild | None:
        child = real(self, module)
        seen.append(0 if child is None else 1)
        return child

    monkeypatch.setattr(warm.Server, "fork", counting)
    monkeypatch.setenv("MEMTUNE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv(warm.OFF_ENV, raising=False)
    model = tmp_path / "m.py"
    model.write_text(
        "import keras\n\ndef build():\n"
        "    m = keras.Sequential([keras.Input((16,), name='x'), keras.layers.Dense(8),"
        " keras.layers.Dense(1, name='answer')])\n"
        "    m.compile('adam', 'mse')\n    return m\n"
    )
    import numpy as np

    x = np.ones((200, 16), dtype="float32")
    y = (np.arange(200) % 2).astype("float32")
    plan = memtune.suggest(f"{model}:build", (x, y), budget="2GiB", no_cache=True)
    assert plan.batch_size >= 1
    assert seen and all(seen)  # every child (trials; the model reader if read in one) forked
    assert warm._current is None


def test_the_child_module_runs_as_python_dash_m(helpers: Path) -> None:
    """Without a warm parent the same module runs the same way (the fallback's path)."""
    proc = subprocess.run(
        [sys.executable, "-m", "warmchild"], input="", capture_output=True, text=True, timeout=60
    )
    assert json.loads(proc.stdout.splitlines()[0])["loaded"] is False


def test_a_trial_near_its_limit_runs_alone_in_a_process_of_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Beside the warm parent only while the trial's extrapolated peak leaves room for the
    warm parent's own pages; the first trial near the limit is the warm parent itself (or
    a fresh child), and no trial is forked after it."""
    from memtune.core.curve import MemoryCurve, Trial
    from memtune.estimate import runner
    from memtune.estimate.cache import TrialCache
    from memtune.estimate.trials import TrialSpec

    monkeypatch.setattr(runner, "own_held", lambda: 100 * MiB)  # the planning process
    s = runner.Setup((), 1, "cpu", 1000 * MiB, TrialCache("k", enabled=False), 10_000)
    trials = runner.Trials(s, TrialSpec("m.py:build", ()), tmp_path)  # 900 MiB for a trial
    monkeypatch.setattr(warm, "_preload", ("x",))
    assert trials._beside_warm(8) and not trials._beside_warm(100)  # nothing measured yet
    trials.seen.append(Trial(8, 300 * MiB))
    assert not trials._beside_warm(100)  # one point and no prior: no slope to go by
    trials.prior = MemoryCurve(250 * MiB, 2 * MiB, "analytic")
    assert trials._beside_warm(150)  # 300 + 2 x 142 x 1.25 = 655 MiB, 96 MiB spare
    assert not trials._beside_warm(250)  # 300 + 2 x 242 x 1.25 = 905 MiB
    trials.seen.append(Trial(400, 500 * MiB))
    assert trials._beside_warm(600)  # along the measured slope: 500 + 0.51 x 200 x 1.25
    assert not trials._beside_warm(880)  # 500 + 0.51 x 480 x 1.25 = 806 MiB, + 96 > 900
    trials.seen.append(Trial(900, 950 * MiB, exceeded=True))
    assert not trials._beside_warm(420)  # a trial was stopped: the rest run alone
    monkeypatch.setattr(warm, "_preload", None)  # stopped: every later trial runs alone
    assert not trials._beside_warm(8)


@linux_only
def test_a_plan_starts_its_warm_parent_before_the_scan_only_for_small_data(
    helpers: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``start_early``: data files up to ``EARLY_SCAN_BYTES`` are scanned beside the warm
    parent's imports; larger ones first (their scan holds memory of its own)."""
    from memtune.app import early

    monkeypatch.setattr(early, "measure_bare_child_soon", lambda: None)
    monkeypatch.delitem(sys.modules, "tensorflow", raising=False)  # as in memtune's CLI
    data = helpers / "data"
    data.mkdir()
    (data / "0.csv").write_text("a,answer\n1,2\n")
    monkeypatch.setattr(early, "EARLY_SCAN_BYTES", 1024)
    early.start_early(data)  # outside a scope: nothing to start
    assert warm._current is None
    with warm.scope(["warmload:load"]):
        early.start_early(data)
        assert warm._current is not None
    (data / "1.csv").write_text("a,answer\n" + "1,2\n" * 1000)
    with warm.scope(["warmload:load"]):
        early.start_early(data)
        assert warm._current is None  # 4 KB of files: the scan runs first
        early.start_early({"a": [1]})  # data in memory: no scan, the model is read first
        assert warm._current is not None
