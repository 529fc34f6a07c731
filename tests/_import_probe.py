"""A module that tests check was never imported (``tests/`` is on sys.path).

Tests that refuse an import path naming it remove it from ``sys.modules``
first and check afterwards that it is still absent.
"""

from __future__ import annotations

import os


def probe(x: int) -> int:
    return x + 1


def _private(x: int) -> int:
    return x


__all__ = ["os", "probe"]
