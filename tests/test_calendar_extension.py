"""The working-day calendar outlives its first years: it knows how far its bank holidays go, is
extended (an activity, so the result is in the workflow's history) before it runs out, and an
operator can push newly announced bank holidays to running follow-ups (`ncpi calendar refresh`)."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from dataclasses import replace
from datetime import date, datetime, time, timedelta, timezone

import pytest
from temporalio import workflow
from temporalio.client import WorkflowExecutionStatus
from temporalio.testing import ActivityEnvironment
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from activities.calendar import CalendarActivities
from ncpi_workflow.clocks import (
    CalendarExtension,
    CalendarRefresh,
    WorkingCalendar,
    calendar_for_report,
    england_and_wales_calendar,
    extend_calendar,
    refresh_for,
)
from ncpi_workflow.errors import UserError
from ncpi_workflow.policy import CalendarPolicy, Policy, load_policy
from ncpi_workflow.temporal import DATA_CONVERTER
from tests.conftest import ROOT, run_ncpi

POLICY = Policy()
CHRISTMAS_2020 = (date(2020, 12, 25), date(2020, 12, 28))  # Boxing Day 2020 fell on a Saturday: substitute Monday 28


def report_2016() -> WorkingCalendar:
    return calendar_for_report(POLICY, date(2016, 11, 29))


# ---------------------------------------------------------------- how far a calendar goes


def test_a_2016_report_calendar_runs_out_at_the_end_of_2019():
    calendar = report_2016()
    assert calendar.covers_until == calendar.known_until() == date(2019, 12, 31)
    # The defect: past its end every weekday is a working day, Christmas 2020 included.
    assert all(calendar.is_working_day(d) for d in CHRISTMAS_2020)
    assert calendar.add_working_days(date(2020, 12, 17), 10) == date(2020, 12, 31)


def test_england_and_wales_calendar_knows_up_to_the_end_of_its_last_year():
    calendar = england_and_wales_calendar(POLICY.calendar, [2018, 2017, 2019])
    assert calendar.covers_until == date(2019, 12, 31)
    assert england_and_wales_calendar(POLICY.calendar, []).covers_until is None


def test_a_calendar_recorded_before_covers_until_existed_derives_it_from_its_holidays():
    old = replace(report_2016(), covers_until=None)
    assert old.known_until() == date(2019, 12, 31)
    assert WorkingCalendar().known_until() == date.min  # knows nothing: any day needs an extension
    assert WorkingCalendar().needs_extension(date(2000, 1, 1))


def test_needs_extension_looks_the_margin_ahead():
    calendar = report_2016()  # known until 31 December 2019
    assert not calendar.needs_extension(date(2018, 11, 26))  # + 400 days = 31 December 2019
    assert calendar.needs_extension(date(2018, 11, 27))
    assert not calendar.needs_extension(date(2019, 12, 1), margin_days=30)
    assert calendar.needs_extension(date(2019, 12, 2), margin_days=30)


# ---------------------------------------------------------------- extending it


def test_an_extended_2016_calendar_gives_5_january_2021_for_ten_working_days_after_17_december_2020():
    calendar = report_2016()
    day = date(2020, 12, 17)
    assert calendar.needs_extension(day)
    extended = extend_calendar(calendar, POLICY.calendar, day + timedelta(days=400))
    assert extended.covers_until == date(2022, 12, 31)
    assert not extended.needs_extension(day)
    assert not any(extended.is_working_day(d) for d in CHRISTMAS_2020)
    assert extended.add_working_days(day, 10) == date(2021, 1, 5)
    # From the first year it already had: 2015 (publication year - 1) onwards.
    assert min(extended.bank_holidays) == date(2015, 1, 1)
    assert set(calendar.bank_holidays) <= set(extended.bank_holidays)
    assert date(2022, 9, 19) in extended.bank_holidays  # the Queen's state funeral, from the package


def test_extending_keeps_the_time_zone_hours_and_an_operator_added_holiday():
    operator_day = date(2017, 6, 12)  # a Monday no official calendar lists
    calendar = replace(
        england_and_wales_calendar(CalendarPolicy(working_day_start=time(8, 0), send_at=time(8, 30)), range(2016, 2020)),
        bank_holidays=tuple(sorted({*report_2016().bank_holidays, operator_day})),
    )
    extended = extend_calendar(calendar, None, date(2024, 3, 1))
    assert (extended.timezone, extended.working_day_start, extended.working_day_end, extended.send_at) == (
        "Europe/London", time(8, 0), time(17, 0), time(8, 30)
    )
    assert operator_day in extended.bank_holidays and not extended.is_working_day(operator_day)
    assert extended.covers_until == date(2024, 12, 31)
    assert len(extended.bank_holidays) == len(set(extended.bank_holidays))
    assert list(extended.bank_holidays) == sorted(extended.bank_holidays)


def test_extending_adds_the_policy_extra_bank_holidays_and_never_shrinks():
    extra = date(2031, 6, 2)
    policy = CalendarPolicy(extra_bank_holidays=(extra,))
    calendar = england_and_wales_calendar(CalendarPolicy(), range(2016, 2030))
    extended = extend_calendar(calendar, policy, date(2020, 1, 1))
    assert extended.covers_until == date(2029, 12, 31)  # asked for less than it knew: it keeps what it knew
    assert extra in extended.bank_holidays
    assert extra in england_and_wales_calendar(policy, range(2030, 2032)).bank_holidays


def test_a_refresh_is_merged_into_a_calendar():
    calendar = report_2016()
    refresh = refresh_for(CalendarPolicy(extra_bank_holidays=(date(2017, 6, 12),)), date(2025, 3, 1))
    assert refresh.covers_until == date(2030, 12, 31)
    assert min(refresh.bank_holidays) == date(2000, 1, 1) and date(2000, 1, 3) in refresh.bank_holidays
    merged = calendar.refreshed(refresh)
    assert merged.covers_until == date(2030, 12, 31)
    assert date(2017, 6, 12) in merged.bank_holidays and not merged.is_working_day(date(2020, 12, 28))
    assert set(calendar.bank_holidays) <= set(merged.bank_holidays)
    # A refresh never makes a calendar forget what it knew.
    assert merged.refreshed(CalendarRefresh((), date(2001, 12, 31))).covers_until == date(2030, 12, 31)


async def test_the_calendar_travels_through_the_data_converter_old_payloads_included():
    extended = extend_calendar(report_2016(), None, date(2021, 6, 1))
    for value, kind in (
        (extended, WorkingCalendar),
        (CalendarExtension(extended, date(2021, 6, 1)), CalendarExtension),
        (CalendarRefresh(extended.bank_holidays, date(2021, 12, 31)), CalendarRefresh),
    ):
        [payload] = await DATA_CONVERTER.encode([value])
        assert (await DATA_CONVERTER.decode([payload], [kind])) == [value]
    # A calendar recorded in a history before covers_until existed.
    [payload] = await DATA_CONVERTER.encode([report_2016()])
    raw = json.loads(payload.data)
    del raw["covers_until"]
    payload.data = json.dumps(raw).encode()
    [old] = await DATA_CONVERTER.decode([payload], [WorkingCalendar])
    assert old.covers_until is None and old.known_until() == date(2019, 12, 31)


async def test_the_extend_calendar_activity():
    activities = CalendarActivities(CalendarPolicy(extra_bank_holidays=(date(2021, 6, 7),)))
    assert [a.__name__ for a in activities.all()] == ["extend_calendar"]
    extended = await ActivityEnvironment().run(
        activities.extend_calendar, CalendarExtension(report_2016(), date(2021, 1, 20))
    )
    assert extended.covers_until == date(2021, 12, 31)
    assert extended.add_working_days(date(2020, 12, 17), 10) == date(2021, 1, 5)
    assert date(2021, 6, 7) in extended.bank_holidays


# ---------------------------------------------------------------- the policy's extra bank holidays


def test_the_policy_file_takes_extra_bank_holidays(tmp_path):
    assert load_policy(ROOT / "config" / "policy.toml").calendar.extra_bank_holidays == ()
    file = tmp_path / "policy.toml"
    file.write_text('[calendar]\nextra_bank_holidays = [2031-06-02, "2027-05-10", 2031-06-02]\n')
    assert load_policy(file).calendar.extra_bank_holidays == (date(2027, 5, 10), date(2031, 6, 2))
    for bad in ('"2027-05-10"', '["2027-13-01"]', "[1979-05-27T07:32:00]", "[5]"):
        file.write_text(f"[calendar]\nextra_bank_holidays = {bad}\n")
        with pytest.raises(UserError, match="calendar.extra_bank_holidays"):
            load_policy(file)


# ---------------------------------------------------------------- `ncpi calendar refresh`


@workflow.defn(name="InspectionFollowUp")
class FakeInspection:
    """Stands in for a follow-up: waits, and keeps every calendar refresh it is sent."""

    def __init__(self) -> None:
        self.refreshes: list[CalendarRefresh] = []

    @workflow.run
    async def run(self) -> None:
        await workflow.wait_condition(lambda: False)

    @workflow.signal(name="refresh_calendar")
    def refresh_calendar(self, refresh: CalendarRefresh) -> None:
        self.refreshes.append(refresh)

    @workflow.query
    def received(self) -> list[CalendarRefresh]:
        return self.refreshes


@workflow.defn(name="RecommendationFollowUp")
class FakeRecommendation(FakeInspection):
    @workflow.run
    async def run(self) -> None:
        await workflow.wait_condition(lambda: False)


async def _count(client, query: str) -> int:
    return (await client.count_workflows(query)).count


async def _visible(client, query: str, expected: int) -> None:
    deadline = asyncio.get_running_loop().time() + 20
    while (found := await _count(client, query)) != expected:
        assert asyncio.get_running_loop().time() < deadline, f"{query}: {found} workflows visible, expected {expected}"
        await asyncio.sleep(0.2)


async def test_calendar_refresh_signals_every_running_follow_up_on_the_task_queue(dev_server_env, tmp_path):
    client = dev_server_env.client
    queue = f"calendar-refresh-{uuid.uuid4().hex[:8]}"
    policy = tmp_path / "policy.toml"
    policy.write_text("[calendar]\nextra_bank_holidays = [2027-06-07]\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("NCPI_")}
    env.update(
        NCPI_TEMPORAL_ADDRESS=dev_server_env.address, NCPI_TASK_QUEUE=queue, NCPI_POLICY=str(policy),
        NCPI_SETTINGS_FILE=str(tmp_path / "absent-ncpi.toml"), NCPI_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'x.db'}",
    )
    async with Worker(client, task_queue=queue, workflows=[FakeInspection, FakeRecommendation],
                      workflow_runner=UnsandboxedWorkflowRunner()):
        running = [
            await client.start_workflow(FakeInspection.run, id=f"{queue}/insp", task_queue=queue),
            *[await client.start_workflow(FakeRecommendation.run, id=f"{queue}/R{i}", task_queue=queue) for i in (1, 2)],
        ]
        finished = await client.start_workflow(FakeRecommendation.run, id=f"{queue}/R3", task_queue=queue)
        await finished.terminate(reason="a closed follow-up is not signalled")
        # Another deployment's follow-up (another task queue, no worker): not ours to signal.
        other = await client.start_workflow("RecommendationFollowUp", id=f"{queue}/other", task_queue=f"{queue}-other")
        try:
            await _visible(client, f'TaskQueue="{queue}" AND ExecutionStatus="Running"', 3)
            await _visible(client, f'TaskQueue="{queue}" AND ExecutionStatus="Terminated"', 1)
            result = await asyncio.to_thread(run_ncpi, "calendar", "refresh", env=env)
            assert result.returncode == 0, result.stderr
            assert result.stderr == ""
            [line] = result.stdout.splitlines()
            this_year = datetime.now(timezone.utc).year
            assert line.startswith("signalled 3 workflows (1 InspectionFollowUp, 2 RecommendationFollowUp): ")
            assert line.endswith(f" bank holidays known through {this_year + 5}-12-31")
            for handle in running:
                [refresh] = await handle.query(FakeInspection.received, result_type=list[CalendarRefresh])
                assert refresh.covers_until == date(this_year + 5, 12, 31)
                assert min(refresh.bank_holidays) == date(2000, 1, 1)
                assert {*CHRISTMAS_2020, date(2027, 6, 7)} <= set(refresh.bank_holidays)
            assert (await finished.describe()).status is WorkflowExecutionStatus.TERMINATED
        finally:
            for handle in (*running, other):
                await handle.terminate(reason="test finished")


def test_calendar_refresh_without_temporal_is_one_line(cli_env):
    from tests.postgres import free_port

    result = run_ncpi("calendar", "refresh", env={**cli_env, "NCPI_TEMPORAL_ADDRESS": f"127.0.0.1:{free_port()}"})
    assert result.returncode != 0 and result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("ncpi: cannot reach Temporal at 127.0.0.1:") and line.endswith("connection refused")
