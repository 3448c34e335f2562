"""Sealing at rest: AES-256-GCM over the records of sensitive resources (Secrets by default).

The key lives in a file of its own, created 0600 in a 0700 directory; put it outside the cache directory (tmpfs,
a TPM-unsealed path) for the seal to mean more than file permissions do. The associated data of every seal is the
record's key, so a sealed record moved under another key (another view, name or resourceVersion) fails to open.
Does not decide what is sealed (store does) and knows nothing of the record layout. Neighbour: store.
"""

from __future__ import annotations

import os
import stat

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import aead

from cache import errors

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16


class Sealer:
    """Seals and opens byte strings under one key; `associated` binds each seal to where it is stored."""

    __slots__ = ("_aead",)

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise errors.SealError(f"sealing key must be {KEY_BYTES} bytes, got {len(key)}")
        self._aead = aead.AESGCM(key)

    @classmethod
    def from_key_file(cls, path: str, *, create: bool = True) -> Sealer:
        return cls(load_or_create_key(path, create=create))

    def seal(self, plaintext: bytes, associated: bytes) -> bytes:
        """nonce + ciphertext + tag; a random 96-bit nonce per record (NIST SP 800-38D §8.2.2)."""
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, plaintext, associated)

    def open(self, sealed: bytes | memoryview, associated: bytes) -> bytes:
        if len(sealed) < NONCE_BYTES + TAG_BYTES:
            raise errors.CorruptRecord("sealed record too short")
        try:
            return self._aead.decrypt(bytes(sealed[:NONCE_BYTES]), bytes(sealed[NONCE_BYTES:]), associated)
        except InvalidTag as e:
            raise errors.CorruptRecord("sealed record does not open (tampered, moved or another key)") from e


def load_or_create_key(path: str, *, create: bool = True) -> bytes:
    """Read the key file; create it (0600, parent 0700) with a fresh random key when absent and `create`."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        if not create:
            raise errors.SealError(f"no sealing key at {path}") from None
        return _create_key(path)
    except OSError as e:
        raise errors.SealError(f"cannot read sealing key {path}: {e}") from e
    try:
        st = os.fstat(fd)
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise errors.SealError(f"sealing key {path} is readable by others (mode {stat.S_IMODE(st.st_mode):o})")
        key = os.read(fd, KEY_BYTES + 1)
    finally:
        os.close(fd)
    if len(key) != KEY_BYTES:
        raise errors.SealError(f"sealing key {path} must hold {KEY_BYTES} bytes, holds {len(key)}")
    return key


def _create_key(path: str) -> bytes:
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, mode=0o700, exist_ok=True)
    key = os.urandom(KEY_BYTES)
    tmp = f"{path}.tmp.{os.getpid()}"
    # O_EXCL + 0600 from the first byte: the key is never readable by others, not even briefly.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, key)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # fails if another process created the key meanwhile: then use theirs
    except FileExistsError:
        os.unlink(tmp)
        return load_or_create_key(path, create=False)
    os.unlink(tmp)
    dfd = os.open(parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return key
