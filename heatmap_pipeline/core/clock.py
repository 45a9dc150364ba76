"""The clock every stored timestamp uses: naive UTC."""

from __future__ import annotations

import datetime as dt


def utcnow() -> dt.datetime:
    """Naive UTC now: every timestamp we store is naive UTC."""
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
