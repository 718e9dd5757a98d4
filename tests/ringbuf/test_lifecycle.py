"""
A ring's life in a process: the package's structure, exit without close,
no resource tracker, the empty-segment race, and typed errors.
"""

from __future__ import annotations

import ast
import os
import pathlib
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import ringbuf
from ringbuf import _layout, _open, _shm
from tests.ringbuf.records import TEST_DTYPE, make_records

ROOT = pathlib.Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "ringbuf"

_PRELUDE = """
import gc, sys, numpy as np, ringbuf
from tests.ringbuf.records import TEST_DTYPE, make_records
name = sys.argv[1]
"""

EXIT_SCENARIOS = {
    "ring-alone": "ring = ringbuf.Ring.attach(name, TEST_DTYPE)",
    "ring-and-writer": (
        "ring = ringbuf.Ring.attach(name, TEST_DTYPE)\n"
        "writer = ring.writer()\n"
        "assert writer.put(make_records(0, 0, 1)[0])"
    ),
    "two-rings-and-a-writer-without-its-ring": (
        "ring = ringbuf.Ring.attach(name, TEST_DTYPE)\n"
        "other = ringbuf.Ring.attach(name, TEST_DTYPE)\n"
        "writer = ringbuf.Ring.attach(name, TEST_DTYPE).writer()\n"
        "assert writer.put(make_records(0, 0, 1)[0])"
    ),
    "del": (
        "ring = ringbuf.Ring.attach(name, TEST_DTYPE)\n"
        "writer = ring.writer()\n"
        "window = ring.window(4)\n"
        "del ring, writer"
    ),
    "gc-cycle": (
        "ring = ringbuf.Ring.attach(name, TEST_DTYPE)\n"
        "writer = ring.writer()\n"
        "ring.cycle = [ring, writer]\n"
        "del ring, writer\n"
        "gc.collect()"
    ),
}


def run_python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter at the repository root."""
    return subprocess.run(
        [sys.executable, "-c", _PRELUDE + code, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _functions(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


class TestStructure:
    """The package is small modules importing each other one way."""

    @pytest.mark.parametrize("path", sorted(PACKAGE.glob("*.py")), ids=str)
    def test_module_and_function_sizes(self, path):
        """Modules stay under 400 lines and functions under 80."""
        text = path.read_text()
        assert len(text.splitlines()) < 400
        for func in _functions(ast.parse(text)):
            assert func.end_lineno - func.lineno < 80, func.name

    def test_no_import_cycle_and_no_late_imports(self):
        """Imports are at module level and form no cycle."""
        graph = {}
        for path in PACKAGE.glob("*.py"):
            tree = ast.parse(path.read_text())
            for func in _functions(tree):
                late = [
                    n
                    for n in ast.walk(func)
                    if isinstance(n, (ast.Import, ast.ImportFrom))
                ]
                assert not late, f"{path.name}:{func.name} imports late"
            targets = set()
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and node.module:
                    if node.module == "ringbuf":
                        targets |= {a.name for a in node.names}
                    elif node.module.startswith("ringbuf."):
                        targets.add(node.module.split(".")[1])
            graph[path.stem] = targets & {p.stem for p in PACKAGE.glob("*")}
        graph.pop("__init__")

        def reaches(start, goal, seen=()):
            return any(
                nxt == goal
                or (nxt not in seen and reaches(nxt, goal, {*seen, nxt}))
                for nxt in graph.get(start, ())
            )

        assert not [m for m in graph if reaches(m, m)]

    @pytest.mark.parametrize("path", sorted(PACKAGE.glob("*.py")), ids=str)
    def test_no_private_attribute_of_another_module(self, path):
        """A module reads only the _attributes that it defines itself."""
        tree = ast.parse(path.read_text())
        modules = {p.stem for p in PACKAGE.glob("_*.py")}
        own = (
            {
                node.name
                for node in ast.walk(tree)
                if isinstance(node, (ast.FunctionDef, ast.ClassDef))
            }
            | {
                target.attr
                for node in ast.walk(tree)
                if isinstance(node, (ast.Assign, ast.AnnAssign))
                for target in (
                    node.targets
                    if isinstance(node, ast.Assign)
                    else [node.target]
                )
                if isinstance(target, ast.Attribute)
            }
            | {
                node.target.id
                for node in ast.walk(tree)
                if isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
            }
        )
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and not (
                    isinstance(node.value, ast.Name)
                    and node.value.id in modules
                )
            ):
                assert node.attr in own, ast.unparse(node)


class TestExitWithoutClose:
    """A process that never closes its rings exits silently."""

    @pytest.mark.parametrize("scenario", sorted(EXIT_SCENARIOS))
    def test_nothing_on_stderr(self, make_ring, scenario):
        """No BufferError (or anything else) is printed at exit."""
        ring = make_ring(TEST_DTYPE)
        done = run_python(EXIT_SCENARIOS[scenario], ring.name)
        assert (done.returncode, done.stderr) == (0, "")

    def test_a_creator_exits_silently_too(self, ring_name):
        """The creating process leaves the segment and prints nothing."""
        code = "ringbuf.Ring.create(name, TEST_DTYPE, 2, 8).writer()"
        done = run_python(code, ring_name)
        assert (done.returncode, done.stderr) == (0, "")
        with ringbuf.Ring.attach(ring_name, TEST_DTYPE) as ring:
            assert ring.lanes == 2

    def test_close_after_a_failed_init_is_safe(self):
        """Class defaults make close() a no-op on a half-built object."""
        ringbuf.Ring.__new__(ringbuf.Ring).close()
        _shm.Segment.__new__(_shm.Segment).close()

    def test_a_writer_keeps_the_mapping_of_a_dropped_ring(self, make_ring):
        """Dropping the Ring object (not closing it) leaves writers usable."""
        name = make_ring(TEST_DTYPE).name
        writer = ringbuf.Ring.attach(name, TEST_DTYPE).writer()
        assert writer.put(make_records(0, 0, 1)[0])
        writer.close()


class TestNoResourceTracker:
    """Attaching or creating starts no helper process."""

    def test_no_child_process(self, make_ring, ring_name):
        """No resource_tracker (or any child) runs after create/attach."""
        make_ring(TEST_DTYPE)
        code = (
            "import psutil\n"
            "a = ringbuf.Ring.attach(name, TEST_DTYPE)\n"
            "w = a.writer()\n"
            "b = ringbuf.Ring.create(name + '.x', TEST_DTYPE, 1, 4)\n"
            "b.unlink()\n"
            "print(len(psutil.Process().children(recursive=True)))"
        )
        done = run_python(code, ring_name)
        assert (done.returncode, done.stderr, done.stdout) == (0, "", "0\n")


class TestEmptySegment:
    """An attacher that meets a segment not yet sized by its creator."""

    def test_stays_empty_raises_ring_corrupt_saying_what_to_do(
        self, ring_name, monkeypatch
    ):
        """A creator that died before ftruncate: unlink it, says the error."""
        monkeypatch.setattr(_open, "_ATTACH_WAIT_S", 0.05)
        os.close(os.open(f"/dev/shm/{ring_name}", os.O_CREAT, 0o600))
        with pytest.raises(ringbuf.RingCorrupt, match="empty") as info:
            ringbuf.Ring.attach(ring_name, TEST_DTYPE)
        assert f"rm /dev/shm/{ring_name}" in str(info.value)

    def test_waits_for_the_creator_to_size_it(self, make_ring, ring_name):
        """A segment sized (and written) while we wait is attached."""
        source = make_ring(TEST_DTYPE, lanes=2, capacity=8)
        with open(f"/dev/shm/{source.name}", "rb") as file:
            image = file.read()
        name = ring_name + ".late"
        fd = os.open(f"/dev/shm/{name}", os.O_CREAT | os.O_RDWR, 0o600)
        started = threading.Event()

        def creator():
            started.wait()
            time.sleep(0.05)
            os.pwrite(fd, image, 0)

        thread = threading.Thread(target=creator)
        thread.start()
        try:
            started.set()
            with ringbuf.Ring.attach(name, TEST_DTYPE) as ring:
                assert ring.epoch == source.epoch
        finally:
            thread.join(timeout=10)
            os.close(fd)
            ringbuf.unlink(name)


class TestTypedErrors:
    """Misuse raises RingError subclasses of the built-in category."""

    def test_closed_ring(self, make_ring):
        """Every use of a closed ring raises RingClosed, a ValueError."""
        ring = make_ring(TEST_DTYPE)
        ring.close()
        for use in (
            lambda: ring.pending(0),
            lambda: ring.advance(0, 0),
            lambda: ring.window(4),
            lambda: ring.lane_state(0),
            ring.writer,
            ring.lock_consumer,
        ):
            with pytest.raises(ringbuf.RingClosed) as info:
                use()
            assert isinstance(info.value, ValueError)

    def test_writer_of_a_closed_ring(self, make_ring):
        """A writer whose ring was closed raises RingClosed."""
        ring = make_ring(TEST_DTYPE)
        writer = ring.writer()
        ring.close()
        with pytest.raises(ringbuf.RingClosed):
            writer.put(make_records(0, 0, 1)[0])
        with pytest.raises(ringbuf.RingClosed):
            writer.put_many(make_records(0, 0, 2))
        writer.close()

    def test_closed_writer(self, make_ring):
        """A closed writer raises RingClosed."""
        writer = make_ring(TEST_DTYPE).writer()
        writer.close()
        with pytest.raises(ringbuf.RingClosed):
            writer.put(make_records(0, 0, 1)[0])

    @pytest.mark.parametrize("lane", [-1, 4])
    def test_bad_lane(self, make_ring, lane):
        """A lane out of range is a LaneIndexError, an IndexError."""
        ring = make_ring(TEST_DTYPE, lanes=4)
        with pytest.raises(ringbuf.LaneIndexError) as info:
            ring.pending(lane)
        assert isinstance(info.value, IndexError)

    @pytest.mark.parametrize(
        ("lanes", "capacity", "error", "builtin"),
        [
            (0, 4, ringbuf.RingArgumentError, ValueError),
            (5000, 4, ringbuf.RingArgumentError, ValueError),
            (1.5, 4, ringbuf.RingArgumentTypeError, TypeError),
            (True, 4, ringbuf.RingArgumentTypeError, TypeError),
        ],
    )
    def test_bad_geometry(self, ring_name, lanes, capacity, error, builtin):
        """Geometry errors are RingErrors with the built-in category."""
        with pytest.raises(error) as info:
            ringbuf.Ring.create(ring_name, TEST_DTYPE, lanes, capacity)
        assert isinstance(info.value, builtin)

    def test_bad_counts(self, make_ring):
        """advance past the head and negative sizes are RingArgumentError."""
        ring = make_ring(TEST_DTYPE)
        with pytest.raises(ringbuf.RingArgumentError, match="between"):
            ring.advance(0, 1)
        with pytest.raises(ringbuf.RingArgumentError):
            ring.window(-1)
        with pytest.raises(ringbuf.RingArgumentError):
            ring.pending(0, max_records=-1)


class TestForkHook:
    """One at-fork hook for every writer, and a pid check behind it."""

    def test_writers_register_no_hook_of_their_own(
        self, make_ring, monkeypatch
    ):
        """Creating writers never calls os.register_at_fork."""
        calls = []
        monkeypatch.setattr(
            os, "register_at_fork", lambda **kw: calls.append(kw)
        )
        ring = make_ring(TEST_DTYPE, lanes=4)
        writers = [ring.writer() for _ in range(4)]
        assert calls == []
        for writer in writers:
            writer.close()

    def test_the_hook_forgets_closed_and_dead_writers(self, make_ring):
        """The hook's set holds live writers only (weakly)."""
        import gc

        from ringbuf import writer as writer_module

        ring = make_ring(TEST_DTYPE, lanes=3)
        kept, closed, dropped = ring.writer(), ring.writer(), ring.writer()
        closed.close()
        del dropped
        gc.collect()
        assert set(writer_module._LIVE) >= {kept}
        assert closed not in writer_module._LIVE
        assert (
            len([w for w in writer_module._LIVE if w._lanes is ring._lanes])
            == 1
        )

    def test_a_new_pid_gives_the_lane_up(self, make_ring):
        """A pid change seen without the hook makes the writer reclaim."""
        ring = make_ring(TEST_DTYPE, lanes=3)
        pid = [100]
        writer = ringbuf.RingWriter(
            ring._lanes, process_identifier=lambda: pid[0]
        )
        parent_lane = writer.lane
        blocker = ring.writer()  # holds the next free lane meanwhile
        pid[0] = 101
        assert writer.lane is None
        assert ring.lane_state(parent_lane).owner_pid == 100
        assert writer.put(make_records(0, 0, 1)[0])
        assert writer.lane not in (None, blocker.lane)
        assert ring.lane_state(writer.lane).owner_pid == 101
        writer.close()
        blocker.close()

    def test_a_new_pid_seen_by_put_reclaims_first(
        self, make_ring, monkeypatch
    ):
        """put's periodic pid check never writes on as the old owner."""
        from ringbuf import writer as writer_module

        ring = make_ring(TEST_DTYPE, lanes=2)
        pid = [100]
        writer = ringbuf.RingWriter(
            ring._lanes, process_identifier=lambda: pid[0]
        )
        assert writer.put_many(make_records(0, 0, 8)) == 8
        pid[0] = 101
        monkeypatch.setattr(writer_module, "_monotonic", lambda: 1e12)
        assert writer.put(make_records(0, 8, 1)[0])
        state = ring.lane_state(writer._lane)
        assert (state.owner_pid, state.claims) == (101, 2)
        writer.close()


class TestMachine:
    """The ring runs only where its memory-order assumption holds."""

    @pytest.mark.parametrize("machine", ["aarch64", "arm64", "ppc64le", ""])
    def test_other_cpus_are_refused(self, make_ring, monkeypatch, machine):
        """create and attach raise UnsupportedPlatform off x86-64."""
        ring = make_ring(TEST_DTYPE)
        monkeypatch.setattr(_open, "_machine", lambda: machine)
        with pytest.raises(ringbuf.UnsupportedPlatform, match="x86-64"):
            ringbuf.Ring.attach(ring.name, TEST_DTYPE)
        with pytest.raises(ringbuf.UnsupportedPlatform):
            ringbuf.Ring.create(ring.name + ".arm", TEST_DTYPE, 1, 4)
        assert not os.path.exists(f"/dev/shm/{ring.name}.arm")

    @pytest.mark.parametrize("machine", ["x86_64", "AMD64"])
    def test_x86_64_is_accepted(self, make_ring, monkeypatch, machine):
        """Both spellings of x86-64 (Linux, Windows-style) pass."""
        ring = make_ring(TEST_DTYPE)
        monkeypatch.setattr(_open, "_machine", lambda: machine)
        ringbuf.Ring.attach(ring.name, TEST_DTYPE).close()


def test_layout_paths_are_beside_each_other():
    """The lock file is the segment's path plus ``.lanes``."""
    assert _layout.lock_path("x") == _layout.segment_path("x") + ".lanes"
    assert np.dtype(TEST_DTYPE).names
