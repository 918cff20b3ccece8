"""State-store helpers shared by the store tests."""

from __future__ import annotations

from collections.abc import Callable

from chunkd.store import CheckpointStore

Opener = Callable[[], CheckpointStore]  # opens another connection to the same backing data
