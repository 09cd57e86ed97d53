"""Connecting to Temporal, the "state" Query and the Updates, and their failures as one-line
UserErrors naming what the user asked about (lifted from the CLI, which had them first)."""

from __future__ import annotations

import asyncio
from contextlib import contextmanager
from typing import Any, Iterator

from ncpi_workflow.errors import UserError

CONNECT_TIMEOUT_SECONDS = 10.0
CALL_TIMEOUT_SECONDS = 60.0
"""How long a Query or Update may wait for the worker before the caller gives up with one line."""

RECOMMENDATION = "recommendation"
INSPECTION = "inspection"


def one_line(text: object, limit: int = 240) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def unreachable(settings, reason: str) -> UserError:
    return UserError(
        f"cannot reach Temporal at {settings.temporal_address} (NCPI_TEMPORAL_ADDRESS, namespace "
        f"{settings.temporal_namespace}): {reason}"
    )


def connect_reason(exc: BaseException) -> str:
    text = str(exc)
    if "Connection refused" in text or "ConnectionRefused" in text:
        return "connection refused"
    return one_line(text.removeprefix("Failed client connect: "), 160)


async def connect(settings):
    """A Temporal client with our data converter, or a one-line UserError."""
    from ncpi_workflow.temporal import connect as temporal_connect

    try:
        return await asyncio.wait_for(
            temporal_connect(settings.temporal_address, settings.temporal_namespace), CONNECT_TIMEOUT_SECONDS
        )
    except asyncio.TimeoutError:
        raise unreachable(settings, f"no answer within {CONNECT_TIMEOUT_SECONDS:g} s") from None
    except RuntimeError as exc:  # the SDK reports a failed connection as RuntimeError("Failed client connect: ...")
        raise unreachable(settings, connect_reason(exc)) from None


def timed_out(settings, subject: str, seconds: float | None = CALL_TIMEOUT_SECONDS) -> UserError:
    within = f" within {seconds:g} s" if seconds else " in time"
    return UserError(
        f"no answer about {subject}{within}: is `ncpi worker` running on task queue "
        f"{settings.task_queue}? (the request may still be carried out when a worker picks it up; check with "
        f"`ncpi show {subject}`)"
    )


@contextmanager
def temporal_errors(settings, subject: str) -> Iterator[None]:
    """Temporal's refusals and failures as one-line UserErrors naming what the user asked about."""
    from temporalio.client import (
        WorkflowQueryFailedError,
        WorkflowUpdateFailedError,
        WorkflowUpdateRPCTimeoutOrCancelledError,
    )
    from temporalio.service import RPCError, RPCStatusCode

    try:
        yield
    except WorkflowUpdateFailedError as exc:
        # A validator's refusal (or a failed handler): its ApplicationError carries the reason.
        cause = exc.cause
        raise UserError(one_line(getattr(cause, "message", None) or cause or exc)) from None
    except WorkflowUpdateRPCTimeoutOrCancelledError:
        raise timed_out(settings, subject) from None
    except WorkflowQueryFailedError as exc:
        raise UserError(f"{subject}: the query failed: {one_line(exc)}") from None
    except RPCError as exc:
        if exc.status is RPCStatusCode.NOT_FOUND:
            if "completed" in (exc.message or "").lower():
                raise UserError(
                    f"the follow-up workflow for {subject} has finished; it accepts no more changes"
                ) from None
            raise UserError(f"no follow-up workflow for {subject} (is it published?)") from None
        if exc.status is RPCStatusCode.UNAVAILABLE:
            raise unreachable(settings, one_line(exc.message, 160)) from None
        if exc.status in (RPCStatusCode.DEADLINE_EXCEEDED, RPCStatusCode.CANCELLED):
            raise timed_out(settings, subject, None) from None
        raise UserError(f"Temporal could not handle the request about {subject}: {one_line(exc.message)}") from None
    except asyncio.TimeoutError:
        raise timed_out(settings, subject) from None


@contextmanager
def database_errors(settings) -> Iterator[None]:
    """A missing schema or an unreachable database as a one-line UserError."""
    from sqlalchemy.exc import OperationalError, ProgrammingError

    try:
        yield
    except (OperationalError, ProgrammingError) as exc:
        text = str(getattr(exc, "orig", exc))
        if "no such table" in text or "does not exist" in text:
            raise UserError("the database has no schema yet: run `ncpi db upgrade`") from None
        raise UserError(f"database {settings.database_url.split('://', 1)[0]}: {one_line(text, 160)}") from None
    except OSError as exc:
        raise UserError(f"database: {one_line(exc, 160)}") from None


# ---------------------------------------------------------------- identifiers


def parse_target(text: str) -> tuple[str, str]:
    """('recommendation' | 'inspection', business ID) from an ID or a workflow ID."""
    from ncpi_workflow.lifecycle import parse_inspection_id, parse_recommendation_id

    for kind, parse in ((RECOMMENDATION, parse_recommendation_id), (INSPECTION, parse_inspection_id)):
        try:
            return kind, parse(text.strip())
        except ValueError:
            continue
    raise UserError(
        f"{text!r} is not an inspection ID such as CUM-2017-01-26 or a recommendation ID such as CUM-2017-01-26-R1"
    )


def parse_recommendation(text: str) -> str:
    from ncpi_workflow.lifecycle import parse_recommendation_id

    try:
        return parse_recommendation_id(text.strip())
    except ValueError as exc:
        raise UserError(str(exc)) from None


def parse_inspection(text: str) -> str:
    from ncpi_workflow.lifecycle import parse_inspection_id

    try:
        return parse_inspection_id(text.strip())
    except ValueError as exc:
        raise UserError(str(exc)) from None


def workflow_id(kind: str, business_id: str) -> str:
    from ncpi_workflow.lifecycle import inspection_workflow_id, recommendation_workflow_id

    return recommendation_workflow_id(business_id) if kind == RECOMMENDATION else inspection_workflow_id(business_id)


def view_type(kind: str):
    from ncpi_workflow.lifecycle import InspectionView, RecommendationView

    return RecommendationView if kind == RECOMMENDATION else InspectionView


# ---------------------------------------------------------------- calls


async def query_state(settings, client, kind: str, business_id: str):
    """The workflow's "state" Query: an InspectionView or a RecommendationView."""
    handle = client.get_workflow_handle(workflow_id(kind, business_id))
    with temporal_errors(settings, business_id):
        return await asyncio.wait_for(handle.query("state", result_type=view_type(kind)), CALL_TIMEOUT_SECONDS)


async def send_update(settings, client, kind: str, business_id: str, update: str, request: Any, result_type: Any = None):
    """One Temporal Update with a fresh update ID; a validator's refusal becomes the UserError it gave."""
    handle = client.get_workflow_handle(workflow_id(kind, business_id))
    with temporal_errors(settings, business_id):
        return await asyncio.wait_for(
            handle.execute_update(update, request, result_type=result_type or view_type(kind)), CALL_TIMEOUT_SECONDS
        )
