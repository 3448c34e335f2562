"""Errors of the cache package."""

from __future__ import annotations


class CacheError(Exception):
    """Root of every error the cache raises."""
