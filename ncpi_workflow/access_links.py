"""Access links: the links in force-facing emails that let a force act without an account.

Every force-facing email carries two links, issued when the email is first rendered (in the
transaction that stores the rendering: the event's, activities/rendering.py, or the delivery's): a **portal** link (`NCPI_PUBLIC_URL` +
`/portal/<token>`) and a **reply** address (`NCPI_REPLY_TO` plus-addressed: `local+<token>@domain`).
Each is scoped to one force and exactly the items that email concerns (a recommendation, a
report-level item such as the action plan, or for the published notice the whole inspection), expires
by policy (`NCPI_LINK_DAYS_AFTER_DEADLINE` days after the latest deadline of its items, and never
sooner than that many days after it was issued), can be revoked by an inspector, and every use is
recorded in the audit trail naming the link.

**The raw token is never stored.** It is derived from the secret key, the row's id and the row's
random salt:

    raw = base64url-no-padding(HMAC-SHA256(key, b"ncpi-link:v1:%d:%s" % (id, salt_hex)))

43 characters, 256 bits, of which the salt (16 random bytes per link) makes 128 unpredictable even to
someone who knows every other link; the key (`link_key`: NCPI_SECRET_KEY, or the key file the web app
keeps in DATA_DIR, one function for the web app and the worker) makes it unforgeable from the database.
The database keeps only SHA-256 of the raw token (`token_hash`), which `resolve_link` looks up.

A notification's rendering is kept in the database (resends are byte-identical), so it holds a
**placeholder** where each token goes: 43 characters, `ncpiLink` + the link's id in 13 digits + its
salt in 22 base64url characters. `fill_link_tokens` puts the tokens in just before the bytes go to
the relay, character for character, across quoted-printable soft line breaks (`=\\r\\n`): the
characters are all literal in quoted-printable and the lengths are equal, so the result is valid
and the same stored bytes always give the same sent bytes. A placeholder names its salt, which is
only in the database: text that merely imitates one (a forged placeholder in a quoted reply) names
no link and is left as it is.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from typing import Any, Iterable

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

PURPOSES = ("portal", "reply")
REPORT_ITEMS = ("action_plan", "pcc_response", "immediate_update")
"""The report-level items a link can cover."""
FORCE_ROLES = ("liaison_officer", "chief_officer", "pcc")
"""Recipients' roles that make a notification force-facing."""
REASONS = ("unknown", "expired", "revoked", "malformed")

TOKEN_LENGTH = 43
PLACEHOLDER_PREFIX = "ncpiLink"
_ID_DIGITS = 13
_SALT_CHARS = 22  # 16 bytes in base64url without padding
_TOKEN = re.compile(r"[A-Za-z0-9_-]{43}")
_DERIVATION = b"ncpi-link:v1:%d:%s"
DEFAULT_DAYS_AFTER_DEADLINE = 30


class LinkInvalid(Exception):
    """A token that opens nothing: `reason` is 'unknown', 'expired', 'revoked' or 'malformed'.
    The message never repeats the token."""

    def __init__(self, reason: str, message: str | None = None):
        if reason not in REASONS:
            raise ValueError(f"unknown reason {reason!r}")
        super().__init__(message or f"link {reason}")
        self.reason = reason


@dataclass(frozen=True)
class LinkScope:
    force_code: str
    inspection_id: str
    recommendation_ids: tuple[str, ...] = ()
    items: tuple[str, ...] = ()
    """Report-level items: action_plan, pcc_response, immediate_update."""

    def covers_recommendation(self, recommendation_id: str) -> bool:
        return recommendation_id in self.recommendation_ids

    def covers_item(self, item: str) -> bool:
        return item in self.items


@dataclass(frozen=True)
class ResolvedLink:
    link_id: int
    purpose: str
    scope: LinkScope
    expires_at: datetime
    notification_id: int | None


@dataclass(frozen=True)
class LinkSettings:
    """What issuing and filling links needs (from `Settings`: `LinkSettings.from_settings`)."""

    key: bytes = field(repr=False)
    web_url: str
    """NCPI_PUBLIC_URL, or the web app's own address."""
    reply_to: str | None
    days_after_deadline: int = DEFAULT_DAYS_AFTER_DEADLINE

    @classmethod
    def from_settings(cls, settings) -> "LinkSettings":
        return cls(link_key(settings), settings.web_url, settings.reply_to, settings.link_days_after_deadline)


# --- the key and the tokens ------------------------------------------------------------------------


def link_key(settings) -> bytes:
    """The secret the tokens are derived with: the web app's own key (NCPI_SECRET_KEY, or the key
    file in DATA_DIR made on first use), so that the worker, which issues links, and the web app,
    which checks them, always agree. One function for both: `ncpi_workflow.web.server.session_secret`."""
    from ncpi_workflow.web.server import session_secret

    return session_secret(settings).encode("utf-8")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def new_salt() -> str:
    return secrets.token_bytes(16).hex()


def derive_token(key: bytes, link_id: int, salt_hex: str) -> str:
    """The raw token of a link (43 characters): never stored, derived again whenever it is sent."""
    if not key:
        raise ValueError("no key to derive link tokens with")
    return _b64(hmac.new(key, _DERIVATION % (link_id, salt_hex.encode("ascii")), hashlib.sha256).digest())


def token_hash(raw_token: str) -> str:
    return hashlib.sha256(raw_token.encode("ascii")).hexdigest()


def placeholder_for(link_id: int, salt_hex: str) -> str:
    """What a rendering holds where link `link_id`'s token goes (43 characters, all literal in
    quoted-printable): `ncpiLink`, the id in 13 digits, the salt in 22 base64url characters."""
    if not 0 <= link_id < 10**_ID_DIGITS:
        raise ValueError(f"link id {link_id} out of range")
    salt = bytes.fromhex(salt_hex)
    if len(salt) != 16:
        raise ValueError("a link's salt is 16 bytes")
    text = f"{PLACEHOLDER_PREFIX}{link_id:0{_ID_DIGITS}d}{_b64(salt)}"
    assert len(text) == TOKEN_LENGTH
    return text


_SOFT = rb"(?:=\r?\n)?"
_PLACEHOLDER = re.compile(
    _SOFT.join(
        [re.escape(ch.encode()) for ch in PLACEHOLDER_PREFIX]
        + [rb"[0-9]"] * _ID_DIGITS
        + [rb"[A-Za-z0-9_-]"] * _SALT_CHARS
    )
)
"""A placeholder in stored bytes, a quoted-printable soft line break allowed between any two characters."""
_PLACEHOLDER_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


def _rewrite(data: bytes, replace) -> bytes:
    """Every placeholder in `data` given to `replace(link_id, salt_hex)`; a 43-character answer is
    written over it character by character (soft line breaks kept where they were), None leaves it."""
    out = bytearray(data)
    for match in _PLACEHOLDER.finditer(data):
        # Soft line breaks are '=', CR and LF, none of them a placeholder character.
        positions = [i for i in range(match.start(), match.end()) if data[i] in _PLACEHOLDER_CHARS]
        text = bytes(data[i] for i in positions).decode("ascii")
        if len(text) != TOKEN_LENGTH:
            continue
        link_id = int(text[len(PLACEHOLDER_PREFIX):len(PLACEHOLDER_PREFIX) + _ID_DIGITS])
        try:
            salt = base64.urlsafe_b64decode(text[-_SALT_CHARS:] + "==")
        except (ValueError, TypeError):
            continue
        if len(salt) != 16 or _b64(salt) != text[-_SALT_CHARS:]:
            continue
        new = replace(link_id, salt.hex())
        if new is None:
            continue
        if len(new) != TOKEN_LENGTH:
            raise ValueError("a replacement must be as long as the placeholder")
        for i, ch in zip(positions, new.encode("ascii")):
            out[i] = ch
    return bytes(out)


def fill_link_tokens(data: bytes, key: bytes) -> bytes:
    """The stored bytes with every placeholder replaced by its raw token, just before sending.

    Deterministic (the same bytes and key always give the same result), length-preserving, and
    tolerant of quoted-printable soft line breaks inside a placeholder."""
    return _rewrite(data, lambda link_id, salt: derive_token(key, link_id, salt) if link_id else None)


def portal_url(settings, raw_token: str) -> str:
    """The portal page of a link: NCPI_PUBLIC_URL (default: the web app's own address) + /portal/TOKEN."""
    return f"{settings.web_url.rstrip('/')}/portal/{raw_token}"


def reply_address(settings, raw_token: str) -> str:
    """NCPI_REPLY_TO plus-addressed with the token: local+TOKEN@domain."""
    mailbox = settings.reply_to
    if not mailbox or "@" not in mailbox:
        raise ValueError("no reply address (NCPI_REPLY_TO) to plus-address")
    local, _, domain = mailbox.rpartition("@")
    return f"{local}+{raw_token}@{domain}"


def token_from_address(address: str) -> str | None:
    """The token of a reply address (`local+TOKEN@domain`), or None when it carries none."""
    local = address.strip().strip("<>").rpartition("@")[0]
    if "+" not in local:
        return None
    candidate = local.rpartition("+")[2]
    return candidate if _TOKEN.fullmatch(candidate) else None


# --- expiry by policy ------------------------------------------------------------------------------


def link_expiry(latest_due: date | None, today: date, days: int) -> datetime:
    """The end (Europe/London) of the day `days` after the later of the items' latest deadline and
    today: a link issued after its deadline (a decision, an overdue reminder) still gets `days`."""
    from ncpi_workflow.formatting import LONDON

    base = max(latest_due, today) if latest_due else today
    end = datetime.combine(base + timedelta(days=days), time(23, 59, 59), LONDON)
    return end.astimezone(timezone.utc)


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)


# --- issuing, resolving, using, revoking -----------------------------------------------------------


def _check_scope(scope: LinkScope) -> None:
    if not scope.force_code or not scope.inspection_id:
        raise ValueError("a link's scope names a force and an inspection")
    unknown = [i for i in scope.items if i not in REPORT_ITEMS]
    if unknown:
        raise ValueError(f"unknown report-level item {unknown[0]!r}; known: {', '.join(REPORT_ITEMS)}")
    if not scope.recommendation_ids and not scope.items:
        raise ValueError("a link's scope names at least one recommendation or report-level item")


async def _insert(session: AsyncSession, *, purpose: str, scope: LinkScope, notification_id: int | None,
                  expires_at: datetime, salt: str, key: bytes) -> tuple[int, str]:
    from ncpi_workflow.models import AccessLink

    if purpose not in PURPOSES:
        raise ValueError(f"unknown link purpose {purpose!r}; known: {', '.join(PURPOSES)}")
    _check_scope(scope)
    row = AccessLink(
        purpose=purpose, token_hash=f"pending:{salt}", salt=salt, force_code=scope.force_code,
        inspection_id=scope.inspection_id, recommendation_ids=list(scope.recommendation_ids), items=list(scope.items),
        notification_id=notification_id, expires_at=_aware(expires_at).astimezone(timezone.utc),  # SQLite keeps no zone
    )
    session.add(row)
    await session.flush()  # the id, which the token is derived from
    raw = derive_token(key, row.id, salt)
    row.token_hash = token_hash(raw)
    await session.flush()
    return row.id, raw


async def issue_link(session: AsyncSession, *, purpose: str, scope: LinkScope, notification_id: int | None,
                     expires_at: datetime, key: bytes | None = None) -> tuple[int, str]:
    """A new link (row id, raw token), in the caller's transaction. The raw token is for the caller to
    put in front of its owner at once (a fresh-link email, a test): it is not kept anywhere.
    `key` defaults to the process's settings' (`link_key(get_settings())`)."""
    if key is None:
        from ncpi_workflow.settings import get_settings

        key = link_key(get_settings())
    return await _insert(session, purpose=purpose, scope=scope, notification_id=notification_id,
                         expires_at=expires_at, salt=new_salt(), key=key)


async def resolve_link(session: AsyncSession, raw_token: str, purpose: str, now: datetime) -> ResolvedLink:
    """The link a raw token opens, or LinkInvalid: 'malformed' (not 43 base64url characters), 'unknown'
    (no such token, or one of another purpose), 'revoked', 'expired'. Looked up by SHA-256 of the
    token, so the lookup's timing says nothing about any stored token."""
    from ncpi_workflow.models import AccessLink

    if not isinstance(raw_token, str) or not _TOKEN.fullmatch(raw_token):
        raise LinkInvalid("malformed")
    digest = token_hash(raw_token)
    row = await session.scalar(select(AccessLink).where(AccessLink.token_hash == digest))
    if row is None or not hmac.compare_digest(row.token_hash, digest) or row.purpose != purpose:
        raise LinkInvalid("unknown")
    if row.revoked_at is not None:
        raise LinkInvalid("revoked")
    expires_at = _aware(row.expires_at)
    if _aware(now) >= expires_at:
        raise LinkInvalid("expired")
    return ResolvedLink(
        link_id=row.id, purpose=row.purpose,
        scope=LinkScope(row.force_code, row.inspection_id, tuple(row.recommendation_ids or ()), tuple(row.items or ())),
        expires_at=expires_at, notification_id=row.notification_id,
    )


def link_actor(link: ResolvedLink) -> str:
    """Who acted, for the audit trail and the records: "<force code> liaison (link #<id>)"."""
    return f"{link.scope.force_code} liaison (link #{link.link_id})"


async def record_link_use(session: AsyncSession, link: ResolvedLink, action: str, detail: str = "",
                          actor: str | None = None) -> None:
    """An audit entry naming the link (actor "<force> liaison (link #id)" unless given), and the
    link's last_used_at, in the caller's transaction."""
    from ncpi_workflow.lifecycle import NAME_MAX, TEXT_MAX
    from ncpi_workflow.models import AccessLink, utcnow
    from ncpi_workflow.store import append_audit

    action = " ".join(str(action).split())
    if not action or len(action) > 50:
        raise ValueError("a link use's action is one word of at most 50 characters")
    now = utcnow()
    await session.execute(update(AccessLink).where(AccessLink.id == link.link_id).values(last_used_at=now))
    await append_audit(
        session, actor=(actor or link_actor(link))[:NAME_MAX], action=f"link.{action}", entity_type="access_link",
        entity_id=str(link.link_id),
        detail={"link_id": link.link_id, "purpose": link.purpose, "force_code": link.scope.force_code,
                "inspection_id": link.scope.inspection_id, "recommendation_ids": list(link.scope.recommendation_ids),
                "items": list(link.scope.items), "detail": str(detail)[:TEXT_MAX]},
    )


async def revoke_link(session: AsyncSession, link_id: int, by: str) -> bool:
    """Revoke a link at once (every later use: LinkInvalid 'revoked'), audited under `by`. True when
    it was revoked now, False when it already was. LookupError when there is no such link."""
    from ncpi_workflow.lifecycle import check_name
    from ncpi_workflow.models import AccessLink, utcnow
    from ncpi_workflow.store import append_audit

    check_name(by, "--by")
    row = await session.get(AccessLink, link_id, with_for_update=True)
    if row is None:
        raise LookupError(f"no link {link_id}")
    if row.revoked_at is not None:
        return False
    row.revoked_at = utcnow()
    row.revoked_by = by.strip()
    await append_audit(session, actor=by.strip(), action="link.revoked", entity_type="access_link", entity_id=str(link_id),
                       detail={"link_id": link_id, "purpose": row.purpose, "force_code": row.force_code,
                               "inspection_id": row.inspection_id})
    return True


async def links_for(session: AsyncSession, target: str) -> list:
    """The links of an inspection (every one) or of a recommendation (those whose scope names it),
    oldest first. LookupError when neither exists."""
    from ncpi_workflow.models import AccessLink, Inspection, Recommendation

    recommendation = await session.get(Recommendation, target)
    inspection_id = recommendation.inspection_id if recommendation is not None else None
    if inspection_id is None:
        if await session.get(Inspection, target) is None:
            raise LookupError(f"no inspection or recommendation {target}")
        inspection_id = target
    rows = list(await session.scalars(
        select(AccessLink).where(AccessLink.inspection_id == inspection_id).order_by(AccessLink.id)
    ))
    if recommendation is not None:
        rows = [r for r in rows if target in (r.recommendation_ids or [])]
    return rows


# --- links issued with a notification's rendering (activities/delivery.py) -------------------------


@dataclass
class _Planned:
    purpose: str
    salt: str

    @property
    def provisional(self) -> str:
        """The placeholder before the row exists: id 0 (no row has it), the link's own salt."""
        return placeholder_for(0, self.salt)


@dataclass
class LinkPlan:
    """The links of one notification, planned before it is rendered (their provisional placeholders
    go into the rendering) and issued in the transaction that stores it (`issue`)."""

    notification_id: int | None
    """None while the notification is not yet recorded (activities/rendering.py sets it as it stores)."""
    scope: LinkScope
    expires_at: datetime
    settings: LinkSettings = field(repr=False)
    planned: list[_Planned] = field(default_factory=list)

    @property
    def portal_url(self) -> str | None:
        link = next((p for p in self.planned if p.purpose == "portal"), None)
        return portal_url(self.settings, link.provisional) if link else None

    @property
    def reply_to(self) -> str | None:
        link = next((p for p in self.planned if p.purpose == "reply"), None)
        return reply_address(self.settings, link.provisional) if link else None

    async def issue(self, session: AsyncSession, data: bytes) -> bytes:
        """Insert the links whose provisional placeholder the rendering holds, and give the rendering
        with their real placeholders (the row ids in them). In the caller's transaction."""
        present = {salt for _, salt in _placeholders(data, only_id=0)}
        ids: dict[str, int] = {}
        for planned in self.planned:
            if planned.salt not in present:
                continue  # an override template without the link: no token is made for nothing
            link_id, _ = await _insert(session, purpose=planned.purpose, scope=self.scope,
                                       notification_id=self.notification_id, expires_at=self.expires_at,
                                       salt=planned.salt, key=self.settings.key)
            ids[planned.salt] = link_id
        return _rewrite(data, lambda link_id, salt: placeholder_for(ids[salt], salt) if link_id == 0 and salt in ids else None)


def _placeholders(data: bytes, only_id: int | None = None) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []

    def note(link_id: int, salt: str) -> None:
        if only_id is None or link_id == only_id:
            found.append((link_id, salt))
        return None

    _rewrite(data, note)
    return found


def _expiry(scope: LinkScope, deadlines: list, days: int, named: date | None, today: date) -> datetime:
    dues = [d.current_due for d in deadlines
            if (d.recommendation_id is not None and d.recommendation_id in scope.recommendation_ids)
            or (d.recommendation_id is None and d.key in scope.items)]
    if named is not None:
        dues.append(named)
    return link_expiry(max(dues) if dues else None, today, days)


async def policy_expiry(session: AsyncSession, scope: LinkScope, days: int, today: date | None = None) -> datetime:
    """When a link for `scope` issued now expires by policy (`days`: NCPI_LINK_DAYS_AFTER_DEADLINE):
    the end of the day `days` after the latest deadline of its items, never sooner than `days` after
    today. For links issued outside an email's rendering (a fresh link asked for by the force)."""
    from ncpi_workflow.formatting import local_date
    from ncpi_workflow.models import Deadline, utcnow

    deadlines = list(await session.scalars(select(Deadline).where(Deadline.inspection_id == scope.inspection_id)))
    return _expiry(scope, deadlines, days, None, today or local_date(utcnow()))


def is_force_facing(roles: Iterable[str]) -> bool:
    return any(role in FORCE_ROLES for role in roles)


async def plan_links(session: AsyncSession, notification_id: int, settings: LinkSettings,
                     today: date | None = None) -> LinkPlan | None:
    """The portal and reply links a notification's email carries, or None when it goes to no force.

    Scope: the notification's recommendation; else its report-level item (the action plan, the PCC
    response, the immediate update); else the recommendations whose outcome it gives (the revisit
    outcome); else (the published notice, and anything else about the whole report) every
    recommendation and report-level item of the inspection. Expiry: `settings.days_after_deadline`
    after the latest deadline of those items (and of the date the notification names, such as a new
    deadline), and never sooner than that after today."""
    from ncpi_workflow.models import Notification

    n = await session.get(Notification, notification_id)
    if n is None:
        return None
    return await plan_links_for(session, n, settings, today, notification_id=notification_id)


async def plan_links_for(session: AsyncSession, n: Any, settings: LinkSettings, today: date | None = None, *,
                         notification_id: int | None = None) -> LinkPlan | None:
    """`plan_links` for a notification given as its row, or as the row it is about to be (not yet
    inserted: activities/rendering.py renders it before the event's transaction; its
    `notification_id` is set when it is stored). The same reading, the same plan."""
    from ncpi_workflow.models import Deadline, Inspection, Recommendation

    if n.inspection_id is None or not is_force_facing((n.recipients or {}).get("roles", [])):
        return None
    inspection = await session.get(Inspection, n.inspection_id)
    if inspection is None:
        return None
    deadlines = list(await session.scalars(select(Deadline).where(Deadline.inspection_id == inspection.id)))
    all_recs = list(await session.scalars(
        select(Recommendation.id).where(Recommendation.inspection_id == inspection.id).order_by(Recommendation.id)
    ))
    return plan_links_from(inspection, deadlines, all_recs, n, settings, today, notification_id=notification_id)


def plan_links_from(inspection: Any, deadlines: list, all_recs: list[str], n: Any, settings: LinkSettings,
                    today: date | None = None, *, notification_id: int | None = None) -> LinkPlan | None:
    """`plan_links_for` from rows already read (the inspection, its deadline rows, its recommendations'
    ids in order): activities/rendering.py plans from the rows as the event leaves them. No database access."""
    from ncpi_workflow.formatting import local_date
    from ncpi_workflow.models import utcnow

    if n.inspection_id is None or not is_force_facing((n.recipients or {}).get("roles", [])):
        return None
    ctx = n.context or {}
    report_items = tuple(i for i in REPORT_ITEMS if any(d.recommendation_id is None and d.key == i for d in deadlines))
    key = ctx.get("deadline")
    outcomes = [r for r in (ctx.get("outcomes") or {}) if r in all_recs]
    if n.recommendation_id:
        recs, items = (n.recommendation_id,), ()
    elif key in REPORT_ITEMS:
        recs, items = (), (key,)
    elif n.kind == "revisit_outcome" and outcomes:
        recs, items = tuple(sorted(outcomes)), ()
    else:
        recs, items = tuple(all_recs), report_items
    if not recs and not items:
        return None
    scope = LinkScope(inspection.force_code, inspection.id, recs, items)
    named = None
    if ctx.get("due"):
        try:
            named = date.fromisoformat(ctx["due"])
        except (TypeError, ValueError):
            pass
    expires_at = _expiry(scope, deadlines, settings.days_after_deadline, named, today or local_date(utcnow()))
    plan = LinkPlan(notification_id if notification_id is not None else n.id, scope, expires_at, settings,
                    [_Planned("portal", new_salt())])
    if settings.reply_to:
        plan.planned.append(_Planned("reply", new_salt()))
    return plan


def describe(row: Any, now: datetime) -> dict[str, Any]:
    """One link for `ncpi links list`: never its token (nor its hash)."""
    expires = _aware(row.expires_at)
    state = "revoked" if row.revoked_at is not None else ("expired" if _aware(now) >= expires else "active")
    return {
        "id": row.id, "purpose": row.purpose, "state": state, "force_code": row.force_code,
        "inspection_id": row.inspection_id, "recommendation_ids": list(row.recommendation_ids or []),
        "items": list(row.items or []), "notification_id": row.notification_id,
        "created_at": _aware(row.created_at).isoformat(), "expires_at": expires.isoformat(),
        "revoked_at": _aware(row.revoked_at).isoformat() if row.revoked_at else None, "revoked_by": row.revoked_by,
        "last_used_at": _aware(row.last_used_at).isoformat() if row.last_used_at else None,
    }
