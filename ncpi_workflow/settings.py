"""One settings object for the whole product.

Values come from NCPI_* environment variables, then from a TOML settings file (`ncpi.toml` in the
working directory, or the file named by NCPI_SETTINGS_FILE), then from the embedded defaults below,
which run everything on one machine.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from ncpi_workflow import CONFIG_DIR
from ncpi_workflow.errors import UserError

SUPPORTED_DATABASE_DRIVERS = {"sqlite+aiosqlite", "postgresql+asyncpg"}


def _settings_file() -> Path:
    return Path(os.environ.get("NCPI_SETTINGS_FILE", "ncpi.toml"))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="NCPI_", extra="ignore", validate_default=True)

    data_dir: Path = Path(".data")
    database_url: str = "sqlite+aiosqlite:///.data/ncpi.db"
    temporal_address: str = "localhost:7233"
    temporal_namespace: str = "default"
    task_queue: str = "ncpi-followup"
    smtp_host: str = "127.0.0.1"
    smtp_port: int = Field(default=8025, ge=1, le=65535)
    smtp_username: str | None = None
    smtp_password: str | None = None
    smtp_starttls: bool = False
    smtp_tls: bool = False
    """Implicit TLS (SMTPS, usually port 465); NCPI_SMTP_STARTTLS upgrades a plain connection instead."""
    smtp_timeout: float = Field(default=30.0, gt=0)
    smtp_rate_limit: float = Field(default=0.0, ge=0, description="Messages per second at most; 0 is unlimited.")
    smtp_idle_seconds: float = Field(default=30.0, ge=0, description="Keep an idle SMTP connection this long for the next burst.")
    smtp_ca_file: Path | None = None
    """A PEM file of the CA certificates the relay's certificate must chain to (a private CA), for the
    relay's connection only: the rest of the process keeps its trust store. A file that cannot be
    read is a relay fault (held, reported by `ncpi health`), not a start-up failure of every command."""
    smtp_fault_probe_seconds: float = Field(default=30.0, gt=0, description=(
        "While the relay is failing as a whole (login refused, TLS, unreachable), try it at most this often; "
        "deliveries in between are held without connecting."))
    smtp_held_retry_seconds: float = Field(default=60.0, gt=0, description=(
        "While the relay is failing as a whole, a held delivery is tried again this often (not on the growing "
        "backoff of other failures), so that it goes out within about this long of the fix."))
    render_at_record: bool = Field(default=True, description=(
        "Render each email as its event is recorded, in the event's transaction, so that the delivery only "
        "leases, sends and marks sent; false: the delivery renders it on its first attempt."))
    outbox_pending_minutes: float = Field(default=15.0, gt=0, description=(
        "A notification pending this long with no delivery in progress is delivered by the reconciler; "
        "`ncpi health` reports how many are pending past it."))
    publishing_grace_minutes: float = Field(default=5.0, gt=0, description=(
        "A report recorded less than this long ago whose follow-up never projected anything is left to "
        "its publisher by the reconciler (it commits the records, then starts the workflow with its own clocks)."))
    publish_concurrency: int = Field(default=8, ge=1, le=64, description=(
        "`ncpi publish A B ...`: at most this many reports are being published (written, their workflow started) at once."))
    stuck_task_attempts: int = Field(default=5, ge=2, description=(
        "A running workflow whose workflow task has been attempted this many times without success is "
        "reported as stuck by the reconciler, `ncpi health` and `ncpi status`."))
    reply_to: str | None = "ncpi-replies@inspectorate.example"
    """The follow-up mailbox. Force-facing emails reply to it plus-addressed with a reply token
    (local+TOKEN@domain, ncpi_workflow/access_links.py), so its local part is at most 20 characters:
    with the 44 of "+TOKEN" it stays within the 64 of RFC 5321."""
    templates_dir: Path | None = None
    shutdown_grace_seconds: float = Field(default=30.0, ge=0, description="On SIGTERM, how long in-flight activities may finish.")
    max_cached_workflows: int = Field(default=1000, ge=0, le=1_000_000, description=(
        "Workflows the worker keeps in memory between their tasks (the SDK's default, 1,000). Beyond it the least "
        "recently used is evicted: it costs no memory until its next event, which then replays its history; 0 caches none."))
    workflow_sandbox: str = Field(default="shared", pattern="^(shared|isolated)$", description=(
        "shared: the workflow code (workflows/, deterministic) is imported once and shared by every workflow run; "
        "isolated: the SDK's default, re-imported for every run (20 to 35 ms of CPU and 230 to 350 KiB more a run: bench/memory.py)."))
    log_format: str = Field(default="text", pattern="^(text|json)$")
    worker_alive_file: Path = Path("/tmp/ncpi-worker.alive")
    """Touched by a running worker every few seconds; `ncpi health --worker` checks it is fresh."""
    dev_ui_port: int = Field(default=8233, ge=1, le=65535)
    dev_time_scale: float = Field(default=50_000.0, gt=0, description="`ncpi dev`: six months in about five minutes.")
    mail_from: str = "ncpi-followup@inspectorate.example"
    inspectors_email: str = "ncpi-inspectors@inspectorate.example"
    lead_hm_inspector_email: str = "lead-hmi@inspectorate.example"
    policy: Path = CONFIG_DIR / "policy.toml"
    forces_file: Path = CONFIG_DIR / "forces.yaml"
    time_scale: float = Field(default=1.0, gt=0, description="Compression of every policy duration; 1 is real time.")
    evidence_max_bytes: int = Field(default=25 * 1024 * 1024, gt=0)
    report_max_bytes: int = Field(default=1024 * 1024, gt=0)
    # -- uploads (ncpi_workflow/uploads.py): every file a force sends, by the portal, by email or the CLI
    upload_scan_command: str | None = None
    """A command that gets each uploaded file's path as its last argument (e.g. `clamdscan --no-summary`);
    a non-zero exit refuses the file with the first line it printed. Unset: no scan."""
    upload_scan_timeout: float = Field(default=120.0, gt=0)
    upload_zip_max_entries: int = Field(default=2_000, gt=0, description="A DOCX/XLSX/ODT holds at most this many entries.")
    upload_zip_max_bytes: int = Field(default=200 * 1024 * 1024, gt=0, description="... and at most this much uncompressed.")
    upload_zip_max_ratio: float = Field(default=100.0, gt=1, description="... and no entry over 1 MiB compressed more than this.")

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str) -> str:
        try:
            url = make_url(value)
        except ArgumentError as exc:
            raise ValueError(f"cannot parse database URL {value!r}") from exc
        if url.drivername not in SUPPORTED_DATABASE_DRIVERS:
            raise ValueError(
                f"unsupported database driver {url.drivername!r}; use one of {sorted(SUPPORTED_DATABASE_DRIVERS)}"
            )
        return value

    @field_validator("smtp_username", "smtp_password", "reply_to", "smtp_ca_file", mode="before")
    @classmethod
    def _empty_is_none(cls, value):
        # Compose passes unset variables through as "": that means "none", not an empty login.
        return None if value == "" else value

    @field_validator("temporal_address")
    @classmethod
    def _host_port(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"expected HOST:PORT, got {value!r}")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (
            init_settings,
            env_settings,
            TomlConfigSettingsSource(settings_cls, toml_file=_settings_file()),
        )

    @property
    def evidence_dir(self) -> Path:
        return self.data_dir / "evidence"

    # -- the web application (`ncpi web`, ncpi_workflow/web/)
    web_host: str = "127.0.0.1"
    web_port: int = Field(default=8000, ge=1, le=65535)
    public_url: str | None = None
    """Where people reach the web app; links in emails start with it. Default http://WEB_HOST:WEB_PORT."""
    secret_key: str | None = Field(default=None, min_length=32, repr=False)
    """Signs the web sessions (keep it secret, the same on every web replica). Unset: a key kept in
    DATA_DIR/web-secret.key, made on first use (what `make run` uses)."""
    web_session_minutes: float = Field(default=60.0, gt=0, description=(
        "A web session ends after this long without a request, and 12 hours after signing in in any case."))
    web_secure_cookies: bool = False
    """Mark the session cookie Secure even for requests that arrive over plain HTTP (a TLS proxy in
    front that does not say so); a request over HTTPS always gets a Secure cookie."""

    @field_validator("public_url", "secret_key", mode="before")
    @classmethod
    def _web_empty_is_none(cls, value):
        return None if value == "" else value

    @property
    def web_url(self) -> str:
        return (self.public_url or f"http://{self.web_host}:{self.web_port}").rstrip("/")

    # -- access links in force-facing emails (ncpi_workflow/access_links.py)
    link_days_after_deadline: int = Field(default=30, ge=1, le=3650, description=(
        "A link in a force-facing email expires at the end of this many days after the latest deadline of "
        "the items it covers (and never sooner than this many days after it was sent)."))

    @field_validator("reply_to")
    @classmethod
    def _reply_to_takes_a_token(cls, value: str | None) -> str | None:
        if value is None:
            return value
        local, at, domain = value.rpartition("@")
        if not at or not local or not domain or any(ch.isspace() for ch in value):
            raise ValueError(f"expected an address such as ncpi-replies@inspectorate.example, got {value!r}")
        if len(local) > 20:
            raise ValueError(f"the part before @ is {len(local)} characters; at most 20, so that the reply "
                             f"address with its 44-character +token fits the 64 of RFC 5321")
        return value

    # -- replies by email (`ncpi inbound smtp|imap`, ncpi_workflow/inbound/)
    inbound_smtp_host: str = "127.0.0.1"
    inbound_smtp_port: int = Field(default=2525, ge=1, le=65535)
    inbound_max_bytes: int = Field(default=50 * 1024 * 1024, gt=0, description=(
        "The largest reply accepted (the whole message as sent, attachments base64-encoded); each file "
        "within it is then held to the upload checks (NCPI_EVIDENCE_MAX_BYTES)."))
    imap_host: str | None = None
    imap_port: int | None = Field(default=None, ge=1, le=65535)
    """Default 993 with NCPI_IMAP_TLS (implicit TLS), else 143."""
    imap_username: str | None = None
    imap_password: str | None = Field(default=None, repr=False)
    imap_mailbox: str = "INBOX"
    imap_processed_mailbox: str | None = None
    """Where a processed message is moved (created if missing); unset: it stays, flagged \\Seen."""
    imap_tls: bool = True
    """Implicit TLS (IMAPS); false: a plain connection (loopback or a trusted network only)."""
    imap_ca_file: Path | None = None
    """PEM CA certificates the IMAP server's certificate must chain to (like NCPI_SMTP_CA_FILE)."""
    imap_poll_seconds: float = Field(default=60.0, gt=0)
    imap_timeout: float = Field(default=30.0, gt=0)

    @field_validator("imap_host", "imap_username", "imap_password", "imap_port", "imap_processed_mailbox",
                     "imap_ca_file", mode="before")
    @classmethod
    def _imap_empty_is_none(cls, value):
        return None if value == "" else value


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment, or a UserError naming the variable and the reason."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"])
        reason = first["msg"].removeprefix("Value error, ")
        raise UserError(f"settings: NCPI_{field.upper()}: {reason}") from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
