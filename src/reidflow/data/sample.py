"""The one record every dataset reader produces."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SPLITS = ("train", "query", "gallery")


@dataclass(frozen=True)
class Sample:
    """One person crop on disk with its labels.

    ``pid`` is the identity id as published by the dataset (unique within ``domain``; distractor
    identities keep the dataset's own convention, e.g. Market-1501's ``0``; junk images are not
    emitted at all); ``-1`` marks an image whose identity the dataset does not publish (VisDA-2020's
    target training split), usable only where identities are ignored (an adaptation target, the
    camera model). ``camid`` is 0-based within ``domain``. ``split`` is one of :data:`SPLITS`.
    ``extra`` holds layout-specific facts worth keeping (sequence, frame, protocol tags).
    """

    path: str
    pid: int
    camid: int
    domain: str
    split: str
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ValueError(f"Sample.split must be one of {SPLITS}, got {self.split!r} for {self.path}")
        if self.camid < 0:
            raise ValueError(f"Sample.camid must be >= 0, got {self.camid} for {self.path}")
