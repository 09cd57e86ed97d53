"""Hypothesis strategies for whole examples: a publication, two or three recommendations of
different timeframes, and a list of actions.

The list is drawn with the model alongside, so that most actions apply to the state reached
(a decision on a recommendation under review, evidence where the revisit asks for it) while
some are chosen regardless and must be refused. The list is plain data: the test runs it again,
from the start, against the model and the real workflows together.
"""

from __future__ import annotations

from datetime import date, timedelta

from hypothesis import strategies as st

from tests.model.actions import (
    CLAIMS,
    DELIVERABLES,
    OUTCOMES,
    REGISTER_WORDS,
    TIMEFRAMES,
    Advance,
    Decide,
    Deliver,
    Evidence,
    Progress,
    Reopen,
    Revise,
    Scenario,
    SetRegister,
    Together,
    TriggerRevisit,
    Withdraw,
)
from tests.model.rules import Model

PUBLICATION_DATES = (
    date(2017, 1, 26),   # Cumbria's: a Thursday
    date(2017, 2, 28),   # + 6 months is the August bank holiday: revisit-by Friday 25th, six-month due Tuesday 29th
    date(2018, 11, 30),  # month ends clamp (+ 3 months: 28 February); Christmas inside the first cycle
    date(2019, 8, 30),   # + 6 months is Saturday 29 February 2020
)
ADVANCES = ("working_days", "next_deadline", "revisit_limit", "past_evidence_deadline", "past_reopen_window")
WORKING_DAYS = (5, 1, 3, 10, 20, 45)
SHIFTS = (5, 1, 2, 15, 40, "same", "today", "weekend")
HORIZON = timedelta(days=900)
"""Examples stop moving time on after about two and a half years of calendar."""

REC_KINDS = ("decide", "withdraw", "progress", "evidence", "reopen", "register", "revise")


def accepts(model: Model, action) -> bool:
    trial = model.copy()
    return bool(trial.apply(action))


def run_on_model(model: Model, action) -> None:
    """What the generator assumes an action does (for Together: first, then second)."""
    if isinstance(action, Advance):
        model.advance_to(model.target(action))
    elif isinstance(action, Together):
        model.apply(action.first)
        model.apply(action.second)
    else:
        model.apply(action)


def _files(actions, ref: str) -> list[str]:
    found = []
    for a in actions:
        for part in ((a.first, a.second) if isinstance(a, Together) else (a,)):
            if isinstance(part, Evidence) and part.ref == ref:
                found.append(part.file)
    return found


def _maker(draw, kind: str, actions: list, serial: int):
    """Draw the parameters of one recommendation action; return a function of the ref."""
    if kind == "progress":
        claim = draw(st.sampled_from(CLAIMS))
        return lambda ref: Progress(ref, claim)
    if kind == "evidence":
        again = draw(st.integers(0, 9)) == 9

        def evidence(ref):
            earlier = _files(actions, ref)
            return Evidence(ref, earlier[-1] if again and earlier else f"{ref}-file{serial}.pdf")
        return evidence
    if kind == "decide":
        outcome = draw(st.sampled_from(OUTCOMES))
        return lambda ref: Decide(ref, outcome)
    if kind == "withdraw":
        return lambda ref: Withdraw(ref)
    if kind == "reopen":
        return lambda ref: Reopen(ref)
    if kind == "revise":
        which = draw(st.sampled_from(("recommendation", "evidence")))
        shift = draw(st.sampled_from(SHIFTS))
        return lambda ref: Revise(ref, which, shift)
    if kind == "register":
        status = draw(st.sampled_from(REGISTER_WORDS))
        comment = "" if draw(st.integers(0, 19)) == 19 else "Plan reviewed by the lead HMI."
        return lambda ref: SetRegister(ref, status, comment)
    raise ValueError(kind)


def _pick_ref(draw, model: Model, make) -> str:
    refs = list(model.recs)
    valid = [ref for ref in refs if accepts(model, make(ref))]
    pool = valid if valid and draw(st.integers(0, 5)) < 5 else refs
    return draw(st.sampled_from(pool))


def _kinds(model: Model) -> list[str]:
    """Action kinds weighted by what the state reached makes interesting. Time passing first:
    hypothesis shrinks towards the start of the list."""
    recs = list(model.recs.values())
    decidable = any(model.decision_allowed(r) for r in recs)
    weights = {
        "advance": 5,
        "progress": 2,
        "evidence": 2 + 3 * any(r.phase in ("evidence_requested", "in_progress") for r in recs),
        "decide": 1 + 6 * decidable,
        "revisit": 1 + 2 * (model.insp.phase == "following_up"),
        "withdraw": 1,
        "reopen": 1 + 3 * any(r.phase == "closed" and not r.finished for r in recs),
        "together": 2 + 2 * decidable,
        "revise": 1,
        "register": 1,
        "deliver": 1 if any(not c.met for c in model.insp.report_clocks.values()) else 0,
    }
    return [kind for kind, weight in weights.items() for _ in range(weight)]


def _action(draw, model: Model, actions: list):
    kind = draw(st.sampled_from(_kinds(model)))
    beyond = model.now - model.published_at > HORIZON
    if kind == "advance":
        how = draw(st.sampled_from(ADVANCES))
        n = draw(st.sampled_from(WORKING_DAYS)) if how == "working_days" else 0
        return Advance("working_days", 1) if beyond else Advance(how, n)
    if kind == "revisit":
        return TriggerRevisit()
    if kind == "deliver":
        return Deliver(draw(st.sampled_from(DELIVERABLES)))
    if kind == "together":
        first = _maker(draw, draw(st.sampled_from(REC_KINDS)), actions, len(actions) + 1)
        second = _maker(draw, draw(st.sampled_from(REC_KINDS)), actions, len(actions) + 2)
        ref = _pick_ref(draw, model, first)
        return Together(first(ref), second(ref))
    make = _maker(draw, kind, actions, len(actions) + 1)
    return make(_pick_ref(draw, model, make))


@st.composite
def scenarios(draw, policy, calendar_for, min_steps: int = 6, max_steps: int = 24):
    published = draw(st.sampled_from(PUBLICATION_DATES))
    count = draw(st.integers(2, 3))
    timeframes = tuple(draw(st.permutations(TIMEFRAMES))[:count])
    model = Model(published, timeframes, policy, calendar_for(published))
    actions: list = []
    for _ in range(draw(st.integers(min_steps, max_steps))):
        action = _action(draw, model, actions)
        actions.append(action)
        run_on_model(model, action)
    return Scenario(published, timeframes, tuple(actions))
