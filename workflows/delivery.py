"""Delivering one notification again, on an operator's word (`ncpi outbox resend ID`)."""

from __future__ import annotations

from temporalio import workflow

from workflows.common import DELIVERY_RETRY, DELIVERY_TIMEOUT, delivery_options  # noqa: F401

with workflow.unsafe.imports_passed_through():
    from ncpi_workflow.lifecycle import resend_workflow_id  # noqa: F401  (kept importable from here)


@workflow.defn(name="NotificationDelivery")
class DeliveryWorkflow:
    @workflow.run
    async def run(self, notification_id: int) -> str:
        return await workflow.execute_activity(
            "deliver_notification", notification_id, **delivery_options(), result_type=str,
        )

