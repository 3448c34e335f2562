"""Errors of the cache package: one root, leaves named by condition."""

from __future__ import annotations


class CacheError(Exception):
    """Root of every error the cache raises."""


class CorruptRecord(CacheError):
    """A stored record failed its checksum, its seal or its decoding; it is skipped, counted and never served."""


class NoCache(CacheError):
    """There is no cache at the given directory (the CLI opens existing caches only)."""


class SealError(CacheError):
    """The sealing key file is missing, unreadable, of the wrong size or too widely readable."""


class WriterBusy(CacheError):
    """Another process already runs a writer on this cache directory (one writer per LMDB environment)."""
