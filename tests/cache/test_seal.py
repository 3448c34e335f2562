"""cache/seal.py: the key file (0600, created once, refused when others can read it) and AES-GCM bound to its key."""

from __future__ import annotations

import os

import pytest

from cache import errors, seal


def test_key_file_is_created_0600_in_a_0700_directory_and_reused(tmp_path):
    path = tmp_path / "keys" / "seal.key"
    a = seal.load_or_create_key(str(path))
    assert len(a) == seal.KEY_BYTES
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    assert seal.load_or_create_key(str(path)) == a
    assert [p.name for p in path.parent.iterdir()] == ["seal.key"]  # no temp file left behind


def test_a_key_others_can_read_is_refused(tmp_path):
    path = tmp_path / "seal.key"
    seal.load_or_create_key(str(path))
    os.chmod(path, 0o644)
    with pytest.raises(errors.SealError, match="readable by others"):
        seal.load_or_create_key(str(path))


def test_a_short_or_missing_key_is_refused(tmp_path):
    path = tmp_path / "seal.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"short")
    os.close(fd)
    with pytest.raises(errors.SealError, match="must hold"):
        seal.load_or_create_key(str(path))
    with pytest.raises(errors.SealError, match="no sealing key"):
        seal.load_or_create_key(str(tmp_path / "absent"), create=False)


def test_sealed_bytes_open_only_under_the_same_key_and_associated_data(tmp_path):
    s = seal.Sealer(os.urandom(32))
    box = s.seal(b"password=hunter2", b"items/key-1")
    assert b"hunter2" not in box
    assert s.open(box, b"items/key-1") == b"password=hunter2"
    with pytest.raises(errors.CorruptRecord):
        s.open(box, b"items/key-2")
    with pytest.raises(errors.CorruptRecord):
        seal.Sealer(os.urandom(32)).open(box, b"items/key-1")
    with pytest.raises(errors.CorruptRecord):
        s.open(box[:10], b"items/key-1")
