"""Connecting to Temporal: the client, the data converter, and the custom search attributes."""

from __future__ import annotations

import functools

from pydantic import TypeAdapter

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest, ListSearchAttributesRequest
from temporalio.client import Client
from temporalio.common import SearchAttributeKey
from temporalio.contrib.pydantic import PydanticJSONPlainPayloadConverter, PydanticPayloadConverter
from temporalio.converter import DataConverter
from temporalio.service import RPCError, RPCStatusCode

FORCE_CODE = SearchAttributeKey.for_keyword("ForceCode")
PROGRAMME = SearchAttributeKey.for_keyword("Programme")
PHASE = SearchAttributeKey.for_keyword("Phase")
NEXT_DEADLINE = SearchAttributeKey.for_datetime("NextDeadline")

SEARCH_ATTRIBUTES = {
    FORCE_CODE.name: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD,
    PROGRAMME.name: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD,
    PHASE.name: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD,
    NEXT_DEADLINE.name: IndexedValueType.INDEXED_VALUE_TYPE_DATETIME,
}
"""What `temporal workflow list --query 'ForceCode="CUM"'` and the Temporal UI filter on."""

# The SDK makes a payload converter for every workflow instance, and the pydantic converter builds
# its TypeAdapters (a schema per type: ~20 ms of CPU for a workflow's input) in a cache of its own: every
# workflow started, or replayed after eviction, built them all again. A TypeAdapter is immutable once
# built, so one cache serves the whole process (the types are the same classes: ncpi_workflow is passed
# through the sandbox). Measured on the publication of 473 workflows: worker CPU 81.5 s -> 24.4 s.
_TYPE_ADAPTERS = functools.lru_cache(maxsize=1024)(TypeAdapter)


class SharedTypeAdapterPayloadConverter(PydanticPayloadConverter):
    """The pydantic payload converter, its TypeAdapters shared by every instance in the process."""

    def __init__(self) -> None:
        super().__init__()
        json_converter = self.converters[b"json/plain"]
        assert isinstance(json_converter, PydanticJSONPlainPayloadConverter)
        json_converter._type_adapter = _TYPE_ADAPTERS


DATA_CONVERTER = DataConverter(payload_converter_class=SharedTypeAdapterPayloadConverter)
"""Dataclasses, dates, times and enums in and out of workflows, the same for client and worker
(the SDK's `pydantic_data_converter`, with its TypeAdapters built once per process)."""


def dev_server_flags() -> list[str]:
    """`temporal server start-dev` flags that register the search attributes at start."""
    names = {
        IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD: "Keyword",
        IndexedValueType.INDEXED_VALUE_TYPE_DATETIME: "Datetime",
    }
    return [flag for name, kind in SEARCH_ATTRIBUTES.items() for flag in ("--search-attribute", f"{name}={names[kind]}")]


async def connect(address: str, namespace: str) -> Client:
    return await Client.connect(address, namespace=namespace, data_converter=DATA_CONVERTER)


async def ensure_search_attributes(client: Client, namespace: str) -> list[str]:
    """Register any of our search attributes the server lacks. Returns the names it added."""
    try:
        existing = await client.operator_service.list_search_attributes(ListSearchAttributesRequest(namespace=namespace))
        known = set(existing.custom_attributes)
    except RPCError as exc:
        if exc.status is not RPCStatusCode.UNIMPLEMENTED:
            raise
        known = set()  # the time-skipping test server can add search attributes but not list them
    missing = {name: kind for name, kind in SEARCH_ATTRIBUTES.items() if name not in known}
    if missing:
        try:
            await client.operator_service.add_search_attributes(
                AddSearchAttributesRequest(namespace=namespace, search_attributes=missing)
            )
        except RPCError as exc:
            if exc.status is not RPCStatusCode.ALREADY_EXISTS:
                raise
            return []
    return sorted(missing)
