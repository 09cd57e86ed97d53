"""Inspectorate staff who sign in to the web application: local accounts, argon2 password hashes.

Roles: `viewer` reads only; `inspector` also acts on follow-ups (revisit, decide, re-open,
withdraw, revise deadlines, record deliveries, register status, re-send notifications); `admin`
also publishes reports and manages users. A disabled account cannot sign in, and its open
sessions end at their next request.

The identity of a signed-in user comes from one place in the web app (`web.auth.current_user`);
these local accounts are its first source, so that OIDC can replace them later.
"""

from __future__ import annotations

import asyncio
import re
import secrets
from datetime import datetime
from enum import StrEnum

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import Boolean, CheckConstraint, String, select
from sqlalchemy.orm import Mapped, mapped_column

from ncpi_workflow.errors import UserError
from ncpi_workflow.models import Base, utcnow


class Role(StrEnum):
    VIEWER = "viewer"
    INSPECTOR = "inspector"
    ADMIN = "admin"


ROLES = tuple(r.value for r in Role)
MIN_PASSWORD_LENGTH = 12
MAX_PASSWORD_LENGTH = 1024
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")

CAN_ACT = {Role.INSPECTOR, Role.ADMIN}
CAN_ADMINISTER = {Role.ADMIN}


class User(Base):
    __tablename__ = "users"
    __table_args__ = (CheckConstraint(f"role IN ({', '.join(repr(r) for r in ROLES)})", name="role_valid"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    """Lower case; the actor of everything the user does."""
    role: Mapped[str] = mapped_column(String(16))
    password_hash: Mapped[str] = mapped_column(String(255))
    """argon2id, in the PHC string format ($argon2id$v=19$m=...,t=...,p=...$salt$hash)."""
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    @property
    def can_act(self) -> bool:
        return self.role in CAN_ACT

    @property
    def is_admin(self) -> bool:
        return self.role in CAN_ADMINISTER


_hasher = PasswordHasher()
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))
"""Verified against when the email is unknown, so that a sign-in takes as long either way."""


def normalise_email(email: str) -> str:
    value = (email or "").strip().lower()
    if not EMAIL.fullmatch(value) or len(value) > 320:
        raise UserError(f"{email!r} is not an email address")
    return value


def check_role(role: str) -> str:
    value = (role or "").strip().lower()
    if value not in ROLES:
        raise UserError(f"role {role!r} is not one of: {', '.join(ROLES)}")
    return value


def check_password(password: str) -> str:
    if not password or not password.strip():
        raise UserError("the password is empty")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise UserError(f"the password is too short: at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise UserError(f"the password is too long: at most {MAX_PASSWORD_LENGTH} characters")
    return password


def hash_password(password: str) -> str:
    return _hasher.hash(check_password(password))


def _verify(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


async def _audit(session, actor: str, action: str, user: User, detail: dict | None = None) -> None:
    from ncpi_workflow.store import append_audit

    await append_audit(session, actor=actor, action=action, entity_type="user", entity_id=user.email[:64],
                       detail={"role": user.role, **(detail or {})})


async def add_user(sessions, email: str, role: str, password: str, *, by: str = "cli") -> User:
    """A new account. Refuses a taken email, an unknown role, an empty or short password."""
    email, role = normalise_email(email), check_role(role)
    password_hash = await asyncio.to_thread(hash_password, password)
    async with sessions.begin() as session:
        if await session.scalar(select(User.id).where(User.email == email)) is not None:
            raise UserError(f"a user {email} already exists")
        user = User(email=email, role=role, password_hash=password_hash, disabled=False, created_at=utcnow())
        session.add(user)
        await session.flush()
        await _audit(session, by, "user.added", user)
    return user


async def list_users(sessions) -> list[User]:
    async with sessions() as session:
        return list(await session.scalars(select(User).order_by(User.email)))


async def get_user(sessions, user_id: int) -> User | None:
    async with sessions() as session:
        return await session.get(User, user_id)


async def disable_user(sessions, email: str, *, by: str = "cli") -> User:
    """Disable an account: it cannot sign in, and its sessions end at their next request."""
    email = normalise_email(email)
    async with sessions.begin() as session:
        user = await session.scalar(select(User).where(User.email == email))
        if user is None:
            raise UserError(f"no user {email}")
        if user.disabled:
            raise UserError(f"{email} is already disabled")
        user.disabled = True
        await _audit(session, by, "user.disabled", user)
    return user


async def set_password(sessions, email: str, password: str, *, by: str = "cli") -> User:
    email = normalise_email(email)
    password_hash = await asyncio.to_thread(hash_password, password)
    async with sessions.begin() as session:
        user = await session.scalar(select(User).where(User.email == email))
        if user is None:
            raise UserError(f"no user {email}")
        user.password_hash = password_hash
        await _audit(session, by, "user.password_set", user)
    return user


async def authenticate(sessions, email: str, password: str) -> User | None:
    """The enabled user with this email and password, or None (unknown, wrong, disabled alike).
    A hash made with weaker parameters than today's is upgraded on the way."""
    try:
        email = normalise_email(email)
    except UserError:
        email = None
    async with sessions() as session:
        user = await session.scalar(select(User).where(User.email == email)) if email else None
    # argon2 takes tens of milliseconds of CPU on purpose: off the event loop.
    if user is None:
        await asyncio.to_thread(_verify, _DUMMY_HASH, password or "")
        return None
    if not await asyncio.to_thread(_verify, user.password_hash, password or ""):
        return None
    if user.disabled:
        return None
    if _hasher.check_needs_rehash(user.password_hash):
        async with sessions.begin() as session:
            stored = await session.get(User, user.id)
            stored.password_hash = await asyncio.to_thread(_hasher.hash, password)
    return user


DEMO_INSPECTOR = "demo.inspector@inspectorate.example"


async def ensure_demo_inspector(sessions, email: str = DEMO_INSPECTOR, role: str = Role.INSPECTOR) -> tuple[str, str]:
    """For `make run`: an account with a fresh random password (set again at every call, so the one
    printed is always the one that works). Returns (email, password)."""
    password = secrets.token_urlsafe(12)
    async with sessions() as session:
        exists = await session.scalar(select(User.id).where(User.email == email)) is not None
    if exists:
        await set_password(sessions, email, password, by="ncpi dev")
        async with sessions.begin() as session:
            user = await session.scalar(select(User).where(User.email == email))
            user.disabled = False
    else:
        await add_user(sessions, email, role, password, by="ncpi dev")
    return email, password
