"""What the GPU and the links did, event by event, inside a replay's timeline window (`replay(timeline=)`).

One event type for the replay and the links alike; its fields are the columns of `timeline.parquet`.
"""

from __future__ import annotations

from typing import NamedTuple


class TimelineEvent(NamedTuple):
    resource: str
    """"gpu", or the link's name ("h2d", "nvme", "gds")."""
    start_s: float
    end_s: float
    id: int
    """The MoE layer (GPU events) or the expert's model-wide key (link events; -1 where unknown)."""
    what: str
    """GPU: "non-expert", "issue fetches", "issue prefetches", "resident experts", "fetched expert";
    links: "demand" or "prefetch"."""


TIMELINE_COLUMNS = TimelineEvent._fields
