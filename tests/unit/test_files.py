"""gridhub.files.write_private: 0600 from creation, atomic replace, create-once."""

from __future__ import annotations

import os
import stat

import pytest
from gridhub import files
from gridhub.files import write_private


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def permissive_umask():
    """umask 0: a file created without an explicit mode would be 0666 here."""
    old = os.umask(0)
    yield
    os.umask(old)


@pytest.fixture
def no_chmod(monkeypatch):
    """A mode set after creation would leave a window where others can read."""

    def refuse(*args, **kwargs):
        raise AssertionError("the mode must come with the file's creation, not a chmod")

    for name in ("chmod", "fchmod", "lchmod"):
        if hasattr(os, name):
            monkeypatch.setattr(os, name, refuse)


def test_a_new_file_is_0600_from_creation(tmp_path, monkeypatch, permissive_umask, no_chmod):
    seen = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        # while the data is written, before the file takes its name
        seen.append(stat.S_IMODE(os.fstat(fd).st_mode))
        real_fsync(fd)

    monkeypatch.setattr(files.os, "fsync", fsync)
    path = write_private(tmp_path / "token", "s3cret\n")
    assert seen == [0o600]
    assert mode(path) == 0o600
    assert path.read_text() == "s3cret\n"
    assert [p.name for p in tmp_path.iterdir()] == ["token"]  # no temporary left


def test_an_existing_file_is_replaced_atomically(tmp_path, permissive_umask, no_chmod):
    path = tmp_path / "credentials.json"
    path.write_bytes(b"old content")  # 0666 under this umask
    with open(path, "rb") as reader:  # a reader that opened the old file
        write_private(path, b"new content")
        assert reader.read() == b"old content"  # whole, not truncated or mixed
    assert path.read_bytes() == b"new content"
    assert mode(path) == 0o600  # a new file, not the old one's mode
    assert [p.name for p in tmp_path.iterdir()] == ["credentials.json"]


def test_a_failed_write_leaves_the_old_content_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "students.json"
    write_private(path, "{}")

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space"):
        write_private(path, '{"alice": 1}')
    assert path.read_text() == "{}"
    assert [p.name for p in tmp_path.iterdir()] == ["students.json"]


def test_create_only_keeps_an_existing_file(tmp_path, permissive_umask, no_chmod):
    path = write_private(tmp_path / "host_key", b"first", replace=False)
    assert mode(path) == 0o600 and path.read_bytes() == b"first"
    with pytest.raises(FileExistsError):
        write_private(path, b"second", replace=False)
    assert path.read_bytes() == b"first"
    assert [p.name for p in tmp_path.iterdir()] == ["host_key"]
