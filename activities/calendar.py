"""The working-day calendar's one piece of I/O: reading newer years' bank holidays from the
`holidays` package. Workflows call it (as a local activity) before their calendar runs out, so the
extended calendar is recorded in their history and a replay sees the same days."""

from __future__ import annotations

from temporalio import activity

from ncpi_workflow.clocks import CalendarExtension, WorkingCalendar, extend_calendar
from ncpi_workflow.policy import CalendarPolicy


class CalendarActivities:
    def __init__(self, policy: CalendarPolicy | None = None):
        # The policy's extra bank holidays join the extended calendar; None: the package's alone
        # (plus whatever the calendar already listed).
        self.policy = policy

    def all(self) -> list:
        return [self.extend_calendar]

    @activity.defn
    async def extend_calendar(self, request: CalendarExtension) -> WorkingCalendar:
        """The calendar extended to know the bank holidays through 31 December of `request.through`'s year."""
        return extend_calendar(request.calendar, self.policy, request.through)
