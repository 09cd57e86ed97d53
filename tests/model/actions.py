"""What a model-based example does: the actions an inspector, a force or the passing of time
take, as plain values. A list of these is a whole example; the named regression tests are such
lists written out by hand.

Actions name their target symbolically where the concrete value depends on the state reached
(a revised date "5 working days from today", "advance to the next deadline"): the model resolves
them, so that a list keeps its meaning when hypothesis shrinks the actions before it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import date
from typing import Union

CLAIMS = ("not_started", "in_progress", "implemented")
OUTCOMES = ("achieved", "partially_achieved", "not_achieved", "superseded", "withdrawn")
REGISTER_WORDS = ("awaiting review", "being progressed", "will be progressed", "no further action needed")
DELIVERABLES = ("immediate_update", "action_plan", "pcc_response")
TIMEFRAMES = ("immediately", "within_three_months", "within_six_months")


@dataclass(frozen=True)
class Progress:
    ref: str
    claim: str


@dataclass(frozen=True)
class Evidence:
    ref: str
    file: str
    """File name; its SHA-256 is that of the name, so the same name is the same file again."""

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.file.encode()).hexdigest()


@dataclass(frozen=True)
class Decide:
    ref: str
    outcome: str
    rationale: str = "Judged at the revisit."


@dataclass(frozen=True)
class Withdraw:
    ref: str
    reason: str = "Overtaken by the force's restructure."


@dataclass(frozen=True)
class Reopen:
    ref: str
    reason: str = "A serious case review found the practice lapsed."


@dataclass(frozen=True)
class Revise:
    ref: str
    deadline: str
    """'recommendation' or 'evidence'."""
    shift: Union[int, str]
    """A positive number of working days from today, or 'same' (its current date), 'today', 'weekend'."""


@dataclass(frozen=True)
class SetRegister:
    ref: str
    status: str
    comment: str = "Plan reviewed by the lead HMI."


@dataclass(frozen=True)
class TriggerRevisit:
    by: str = "hmi.lead"


@dataclass(frozen=True)
class Deliver:
    item: str


@dataclass(frozen=True)
class Together:
    """Two actions on one recommendation, sent at the same moment."""

    first: "RecAction"
    second: "RecAction"


@dataclass(frozen=True)
class Advance:
    """Time passes. `how`: 'working_days' (by n), 'next_deadline' (to the day of the next due date
    of any open clock), 'past_evidence_deadline' (the working day after the earliest open evidence
    deadline), 'revisit_limit' (the day of the inspection's revisit-by limit), 'past_reopen_window'
    (the working day after the earliest end of a re-open window)."""

    how: str
    n: int = 0


RecAction = Union[Progress, Evidence, Decide, Withdraw, Reopen, Revise, SetRegister]
Action = Union[RecAction, TriggerRevisit, Deliver, Together, Advance]
REC_ACTIONS = (Progress, Evidence, Decide, Withdraw, Reopen, Revise, SetRegister)


@dataclass(frozen=True)
class Scenario:
    published: date
    timeframes: tuple[str, ...]
    """Timeframe of R1, R2, ... in report order."""
    actions: tuple[Action, ...]

    @property
    def refs(self) -> tuple[str, ...]:
        return tuple(f"R{i}" for i in range(1, len(self.timeframes) + 1))
