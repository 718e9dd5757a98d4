"""
Whose segments and lock files a ring uses: ours or root's, never open to
others, never through a symlink; a deleted lock file is recreated.
"""

from __future__ import annotations

import os
import pwd
import stat
import subprocess

import pytest

import ringbuf
from tests.ringbuf.records import TEST_DTYPE, make_records

_COPY_AS_NOBODY = 'umask 077 && cat > "$1"'


def plant(name: str, image: bytes, mode: int) -> str:
    """Write a segment file by hand with exactly ``mode``."""
    path = f"/dev/shm/{name}"
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, image)
    finally:
        os.close(fd)
    return path


@pytest.fixture
def image(make_ring):
    """The bytes of a valid, freshly created ring segment."""
    ring = make_ring(TEST_DTYPE, lanes=2, capacity=8)
    with open(f"/dev/shm/{ring.name}", "rb") as file:
        return file.read()


@pytest.fixture
def other_name(ring_name):
    """A second ring name, unlinked after the test."""
    name = ring_name + ".planted"
    yield name
    ringbuf.unlink(name)


class TestHostileSegment:
    """A segment another user could have planted is never used."""

    @pytest.mark.parametrize("mode", [0o666, 0o604, 0o601])
    def test_world_accessible_segment_is_refused(
        self, image, other_name, mode
    ):
        """Any bit for others: RingUntrusted naming owner, mode and fix."""
        path = plant(other_name, image, mode)
        with pytest.raises(ringbuf.RingUntrusted) as info:
            ringbuf.Ring.attach(other_name, TEST_DTYPE)
        message = str(info.value)
        assert f"mode {mode:04o}" in message
        assert "owner uid 0" in message
        assert f"rm {path}" in message
        assert "another ring name" in message
        assert isinstance(info.value, PermissionError)

    def test_open_does_not_create_over_it(self, image, other_name):
        """Ring.open refuses too, rather than treating it as missing."""
        plant(other_name, image, 0o666)
        with pytest.raises(ringbuf.RingUntrusted):
            ringbuf.Ring.open(other_name, TEST_DTYPE, 1, 4)

    def test_group_bits_of_another_group_are_refused(self, image, other_name):
        """Group access is fine only for the group the caller allows."""
        path = plant(other_name, image, 0o660)
        os.chown(path, -1, 12345)
        with pytest.raises(ringbuf.RingUntrusted, match="group 12345"):
            ringbuf.Ring.attach(other_name, TEST_DTYPE)
        with ringbuf.Ring.attach(other_name, TEST_DTYPE, group=12345) as r:
            assert r.lanes == 2

    def test_foreign_owner_is_refused(self, image, other_name):
        """A segment created by another user (nobody) is refused."""
        nobody = pwd.getpwnam("nobody")
        path = f"/dev/shm/{other_name}"

        def become_nobody():
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)

        subprocess.run(
            ["/bin/sh", "-c", _COPY_AS_NOBODY, "sh", path],
            input=image,
            preexec_fn=become_nobody,
            check=True,
            timeout=30,
            cwd="/",
        )
        assert os.stat(path).st_uid == nobody.pw_uid
        with pytest.raises(ringbuf.RingUntrusted) as info:
            ringbuf.Ring.attach(other_name, TEST_DTYPE)
        assert f"owner uid {nobody.pw_uid}" in str(info.value)

    def test_a_symlinked_segment_is_refused(self, tmp_path, other_name):
        """The segment itself is never opened through a symlink."""
        target = tmp_path / "target"
        target.write_bytes(b"x" * 4096)
        os.symlink(target, f"/dev/shm/{other_name}")
        with pytest.raises(ringbuf.RingUntrusted, match="symbolic link"):
            ringbuf.Ring.attach(other_name, TEST_DTYPE)


class TestCreateModes:
    """What create gives the files it makes."""

    def test_group_sets_the_gid_and_0660(self, ring_name):
        """With a group, both files get it and mode 0660 despite umask."""
        group = 12345
        old = os.umask(0o077)
        try:
            ring = ringbuf.Ring.create(
                ring_name, TEST_DTYPE, 1, 4, group=group
            )
        finally:
            os.umask(old)
        ring.writer().close()
        for path in (f"/dev/shm/{ring_name}", f"/dev/shm/{ring_name}.lanes"):
            info = os.stat(path)
            assert (info.st_gid, stat.S_IMODE(info.st_mode)) == (group, 0o660)
        ring.close()

    def test_pickle_keeps_the_group_even_after_close(self, ring_name):
        """A pickled ring re-attaches trusting the same group."""
        import pickle

        ring = ringbuf.Ring.create(ring_name, TEST_DTYPE, 1, 4, group=12345)
        ring.close()
        with pickle.loads(pickle.dumps(ring)) as clone:
            assert (clone.group, clone.epoch) == (12345, ring.epoch)

    def test_mode_for_others_is_refused(self, ring_name):
        """create never makes a ring that attachers would refuse."""
        with pytest.raises(ringbuf.RingArgumentError, match="other users"):
            ringbuf.Ring.create(ring_name, TEST_DTYPE, 1, 4, mode=0o644)
        assert not os.path.exists(f"/dev/shm/{ring_name}")


class TestLockFile:
    """The lock file beside the segment."""

    def test_symlinked_lock_file_is_refused_untouched(
        self, make_ring, tmp_path
    ):
        """A symlink is never followed: its target keeps mode and bytes."""
        ring = make_ring(TEST_DTYPE)
        lock = f"/dev/shm/{ring.name}.lanes"
        os.unlink(lock)
        target = tmp_path / "target"
        target.write_bytes(b"precious")
        target.chmod(0o644)
        os.symlink(target, lock)
        with ringbuf.Ring.attach(ring.name, TEST_DTYPE) as other:
            with pytest.raises(ringbuf.RingUntrusted, match="symbolic"):
                other.writer()
            with pytest.raises(ringbuf.RingUntrusted, match="symbolic"):
                other.lane_state(0)
        assert stat.S_IMODE(target.stat().st_mode) == 0o644
        assert target.read_bytes() == b"precious"
        assert os.path.islink(lock)

    def test_create_refuses_a_planted_lock_symlink(self, ring_name, tmp_path):
        """create never chmods through a lock-file symlink planted first."""
        target = tmp_path / "target"
        target.write_bytes(b"precious")
        target.chmod(0o644)
        os.symlink(target, f"/dev/shm/{ring_name}.lanes")
        with pytest.raises(ringbuf.RingUntrusted):
            ringbuf.Ring.create(ring_name, TEST_DTYPE, 1, 4, mode=0o660)
        assert stat.S_IMODE(target.stat().st_mode) == 0o644

    def test_world_writable_lock_file_is_refused(self, make_ring):
        """A lock file open to others could be used to hold every lane."""
        ring = make_ring(TEST_DTYPE)
        os.chmod(f"/dev/shm/{ring.name}.lanes", 0o666)
        with pytest.raises(ringbuf.RingUntrusted, match="lock file"):
            ring.writer()

    def test_deleted_lock_file_is_recreated(self, make_ring):
        """A lock file deleted under a live segment comes back, 0600."""
        ring = make_ring(TEST_DTYPE, lanes=2)
        lock = f"/dev/shm/{ring.name}.lanes"
        os.unlink(lock)
        with ringbuf.Ring.attach(ring.name, TEST_DTYPE) as other:
            writer = other.writer()
            assert writer.put(make_records(0, 0, 1)[0])
            assert other.lane_state(writer.lane).owned
            writer.close()
        assert stat.S_IMODE(os.stat(lock).st_mode) == 0o600
