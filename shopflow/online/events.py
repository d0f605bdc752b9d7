"""What shoppers did with what they were shown: the POST /events contract.

A batch of click / add_to_cart / purchase events, each naming the impression it belongs to
and the 1-based position of the product in it. `event_id` makes a retried batch harmless:
an id seen before is acknowledged and not written again (in this process; the join drops
any duplicate that reaches the log from another worker or a restart). The batch is checked
as a whole, so a client never has to work out which half of a batch was kept: one bad event
is a 400 naming `events[i].<field>`, and nothing of that batch is logged.

Events for an impression this process has not seen are logged with `impression_seen: false`:
another worker may have served it, so only the join can tell, and it keeps them apart.
"""

from __future__ import annotations

import datetime as dt
from collections import OrderedDict
from collections.abc import Iterable
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

EventType = Literal["click", "add_to_cart", "purchase"]
Id = Annotated[str, StringConstraints(pattern=r"^[\w.:-]{1,100}$")]


class Event(BaseModel):
    """One shopper action on one shown product."""

    model_config = ConfigDict(extra="forbid", strict=True)
    event_id: Id
    impression_id: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")]
    type: EventType
    product_id: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    position: int = Field(ge=1, le=1000)
    timestamp: AwareDatetime | None = Field(
        None,
        strict=False,  # an ISO 8601 string in JSON
        description="when it happened (ISO 8601 with zone); default: when it arrived",
    )


def event_batch_model(max_events: int) -> type[BaseModel]:
    """The request body of POST /events, sized by `online.max_events`."""

    class EventBatch(BaseModel):
        """Events of one or more impressions, written as one batch."""

        model_config = ConfigDict(extra="forbid", strict=True)
        events: Annotated[list[Event], Field(min_length=1, max_length=max_events)]

    return EventBatch


class Recent(OrderedDict):
    """A bounded insertion-ordered map: the oldest key goes when it is full."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def remember(self, key: str, value: object = True) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.limit:
            self.popitem(last=False)


def problems_with(events: Iterable[Event], shown: Recent) -> list[str]:
    """Events that contradict an impression this process served: the product is not at the
    position the event names. Each problem names the event's index and field."""
    found = []
    for i, event in enumerate(events):
        items = shown.get(event.impression_id)
        if items is None:
            continue
        if event.position > len(items):
            found.append(
                f"events[{i}].position: {event.position} is past the {len(items)} products of "
                f"impression {event.impression_id}"
            )
        elif items[event.position - 1] != event.product_id:
            found.append(
                f"events[{i}].product_id: {event.product_id!r} was not shown at position "
                f"{event.position} of impression {event.impression_id}"
            )
    return found


def event_records(
    events: Iterable[Event], shown: Recent, seen_ids: Recent
) -> tuple[list[dict], int]:
    """Log records of the events not seen before, and how many were duplicates."""
    received = dt.datetime.now(dt.UTC)
    records, duplicates = [], 0
    for event in events:
        if event.event_id in seen_ids:
            duplicates += 1
            continue
        seen_ids.remember(event.event_id)
        happened = event.timestamp.astimezone(dt.UTC) if event.timestamp else received
        records.append(
            {
                "kind": "event",
                "event_id": event.event_id,
                "impression_id": event.impression_id,
                "type": event.type,
                "product_id": event.product_id,
                "position": event.position,
                "timestamp": happened.isoformat(timespec="milliseconds"),
                "received_at": received.isoformat(timespec="milliseconds"),
                "impression_seen": event.impression_id in shown,
            }
        )
    return records, duplicates
