"""Where the Responses API keeps responses between requests: a bounded, in-memory LRU.

``store: true`` (the spec's default) keeps a response so that ``GET /v1/responses/{id}`` can
return it and ``previous_response_id`` can continue from it. Each record holds the whole
conversation up to and including that response, so continuing never walks a chain whose
older links may already be gone. Items are shared between records, not copied: a chain of
n turns costs n records of references, not n copies of the text.

The store is bounded because every stored response is memory the server can never give back
otherwise: a client that sends the default ``store: true`` on every request (most do, without
knowing) would grow it until the process dies. When it is full, the least recently used
record goes. It lives and dies with the process; chapter 9 says what a real deployment keeps
instead.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any


# --8<-- [start:store]
@dataclass(frozen=True)
class Stored:
    response: dict[str, Any]                 # the Response object, as it was sent
    input_items: list[dict[str, Any]]        # this request's input, with ids (GET .../input_items)
    conversation: tuple[dict[str, Any], ...]  # every item so far: earlier turns, this input, this output


class ResponseStore:
    """At most ``capacity`` responses; reading one makes it the most recently used."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._records: OrderedDict[str, Stored] = OrderedDict()

    def put(self, record: Stored) -> None:
        self._records[record.response["id"]] = record
        self._records.move_to_end(record.response["id"])
        while len(self._records) > self.capacity:
            self._records.popitem(last=False)

    def get(self, response_id: str) -> Stored | None:
        record = self._records.get(response_id)
        if record is not None:
            self._records.move_to_end(response_id)
        return record

    def delete(self, response_id: str) -> bool:
        return self._records.pop(response_id, None) is not None

    def __len__(self) -> int:
        return len(self._records)
# --8<-- [end:store]
