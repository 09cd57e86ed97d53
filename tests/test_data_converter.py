"""The data converter: the SDK's pydantic converter, with one TypeAdapter per type for the whole
process (the SDK makes a payload converter per workflow instance; each used to build its own)."""

from __future__ import annotations

from datetime import date, datetime, timezone

from temporalio.contrib.pydantic import pydantic_data_converter

from ncpi_workflow import temporal
from ncpi_workflow.lifecycle import DecisionRecord, NotificationRequest


def _values():
    return [
        DecisionRecord("k/1", "CUM-2017-01-26-R1", 1, "achieved", "the evidence", "inspector",
                       datetime(2017, 7, 3, 9, 0, tzinfo=timezone.utc)),
        NotificationRequest(
            idempotency_key="k/2", kind="reminder", inspection_id="CUM-2017-01-26", recommendation_id=None,
            recipients=("liaison_officer",), subject="Reminder", scheduled_for=datetime(2017, 4, 20, 9, tzinfo=timezone.utc),
            context={"due": date(2017, 4, 26).isoformat(), "cycle": 1},
        ),
    ]


def test_payloads_are_byte_identical_to_the_sdks_pydantic_converter():
    ours = temporal.DATA_CONVERTER.payload_converter_class()
    sdk = pydantic_data_converter.payload_converter_class()
    values = _values()
    encoded = ours.to_payloads(values)
    assert [p.SerializeToString() for p in encoded] == [p.SerializeToString() for p in sdk.to_payloads(values)]
    assert ours.from_payloads(encoded, [type(v) for v in values]) == values


def test_every_payload_converter_in_the_process_shares_its_type_adapters():
    # As the worker does: a new payload converter for each workflow instance.
    first, second = (temporal.DATA_CONVERTER.payload_converter_class() for _ in range(2))
    payloads = first.to_payloads(_values())
    first.from_payloads(payloads, [DecisionRecord, NotificationRequest])
    built = temporal._TYPE_ADAPTERS.cache_info().misses
    second.from_payloads(payloads, [DecisionRecord, NotificationRequest])
    assert temporal._TYPE_ADAPTERS.cache_info().misses == built, "the second converter built its own TypeAdapters"
    stock = pydantic_data_converter.payload_converter_class()
    assert stock.converters[b"json/plain"]._type_adapter is not temporal._TYPE_ADAPTERS  # the SDK's own is separate
