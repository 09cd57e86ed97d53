"""The inbox: replies by email that were not recorded (triaged) and automatic mail, for inspectors.

Read-only (every signed-in role, viewers included); what to do with a triaged reply is an
inspector's call through the usual pages (record the progress or evidence on the recommendation).
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from ncpi_workflow.inbound.inbox import list_inbox
from ncpi_workflow.web.auth import Principal, services, signed_in
from ncpi_workflow.web.rendering import render

router = APIRouter()

SHOWN = 500
VIEWS = {"triage": "Needs attention", "automatic": "Automatic mail", "recorded": "Recorded", "all": "Everything"}


@router.get("/inbox")
async def inbox(request: Request, show: str | None = None, user: Principal = Depends(signed_in)):
    svc = services(request)
    show = show if show in VIEWS else "triage"
    if show == "triage":
        records = await list_inbox(svc.sessions, limit=SHOWN + 1)
        records = [r for r in records if r["outcome"] != "automatic"]
    elif show == "all":
        records = await list_inbox(svc.sessions, everything=True, limit=SHOWN + 1)
    else:
        records = await list_inbox(svc.sessions, outcome=show, limit=SHOWN + 1)
    return render(request, "inbox.html", 200, title="Inbox", records=records[:SHOWN], more=len(records) > SHOWN,
                  shown=SHOWN, show=show, views=VIEWS, reply_to=svc.settings.reply_to)
