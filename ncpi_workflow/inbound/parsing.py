"""Reading a reply: who sent it, to which reply token, about what, its own text and its files.

Pure functions over the message's bytes (the `email` package, `policy.default`): nothing here
touches the database or Temporal, so every rule is tested on its own (tests/test_inbound.py).

- **Automatic mail** (RFC 3834, RFC 6522): `Auto-Submitted` other than "no", `X-Autoreply`,
  `X-Autorespond`, `Precedence: bulk / auto_reply / list / junk`, `List-Id` or
  `List-Unsubscribe`, a `multipart/report` (delivery and read reports), an empty `Return-Path`
  (`<>`, a bounce) or envelope sender, or a mailer daemon's From. Such mail records nothing and is
  never answered.
- **The token** is the plus part of a recipient address on the reply address
  (`NCPI_REPLY_TO` = `replies@x` -> `replies+TOKEN@x`), looked for in the SMTP envelope's
  recipients and in To, Cc, Delivered-To and X-Original-To.
- **The sender** is the one address of From. A `Sender` naming someone else (mail sent on behalf
  of another) is not taken as the contact's own.
- **The text** is the first text/plain part (or the HTML part made plain) without the quoted
  original: everything from the first "On ... wrote:" line (one or two lines long), an Outlook
  "-----Original Message-----" or "From: ... / Sent: ..." block, or a "-- " signature, and every
  line starting with ">".
- **The claim** may be given on the text's first line: "implemented", "in progress" or
  "not started" (alone, or after "claim:" / "status:" or an R-number). Without one the
  recommendation keeps its current claim.
- **Attachments**: every part with a file name that is not the text itself, except inline images
  the HTML refers to by Content-ID (signature logos).
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import re
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import getaddresses, parseaddr
from html.parser import HTMLParser

TOKEN_PATTERN = re.compile(r"^[A-Za-z0-9_-]{43}$")
"""A raw link token: base64url without padding of 32 bytes (ncpi_workflow/access_links.py)."""

_TOKEN_ANYWHERE = re.compile(r"(?<![A-Za-z0-9_-])[A-Za-z0-9_-]{43}(?![A-Za-z0-9_-])")
_PLUS_PART = re.compile(r"\+[^@\s<>,;\"]*@")
_PORTAL_LINK = re.compile(r"(/portal/)[^\s<>\"')\]]+")

AUTOMATIC_PRECEDENCE = {"bulk", "auto_reply", "list", "junk"}
RECIPIENT_HEADERS = ("To", "Cc", "Delivered-To", "X-Original-To")
MAILER_DAEMONS = {"mailer-daemon", "postmaster", "mail-daemon", "mailerdaemon"}

CLAIM_WORDS = (
    ("not started", "not_started"),
    ("not yet started", "not_started"),
    ("in progress", "in_progress"),
    ("under way", "in_progress"),
    ("underway", "in_progress"),
    ("implemented", "implemented"),
    ("complete", "implemented"),
    ("completed", "implemented"),
)
"""First-line words and the claim they state, longest first where one begins another."""

_REC_ID = re.compile(r"\b([A-Z]{3}-\d{4}-\d{2}-\d{2})(?:-(R\d{1,3}))?\b")
_R_REF = re.compile(r"(?<![A-Za-z0-9-])R(\d{1,3})(?![A-Za-z0-9])")


@dataclass(frozen=True)
class Attachment:
    filename: str
    content_type: str
    data: bytes

    @property
    def size_bytes(self) -> int:
        return len(self.data)


@dataclass(frozen=True)
class ParsedReply:
    message_id: str
    """The Message-ID header, or `<sha256-...@ncpi-inbound.invalid>` from the message when it has none."""
    sender: str
    """The From address, lower-cased; "" when there is not exactly one."""
    sender_problem: str | None
    """Why the sender cannot be taken as the From address's owner (several From, on behalf of...)."""
    subject: str
    recipients: tuple[str, ...]
    """Every recipient address seen (envelope and headers), as given (tokens included: never store)."""
    tokens: tuple[str, ...]
    """Distinct well-formed tokens on the reply address, in the order found."""
    malformed_token: bool
    """A plus part on the reply address that is not a well-formed token."""
    automatic: str | None
    """Why this is automatic mail (never recorded, never answered), or None."""
    text: str
    """The reply's own text, quoted original and signature removed."""
    attachments: tuple[Attachment, ...] = field(default_factory=tuple)
    unreadable: str | None = None
    """Set when the bytes could not be parsed at all (the message is triaged with this reason)."""

    @property
    def first_line(self) -> str:
        return next((line.strip() for line in self.text.splitlines() if line.strip()), "")


def parse_message(data: bytes) -> EmailMessage:
    return email.message_from_bytes(data, policy=email.policy.default)


def _header(message: EmailMessage, name: str) -> str:
    try:
        value = message.get(name)
    except (ValueError, TypeError, IndexError):  # a header the parser cannot make sense of
        raw = message.get_all(name, failobj=[None])[0] if hasattr(message, "get_all") else None
        value = raw
    return " ".join(str(value).split()) if value is not None else ""


def message_id_of(message: EmailMessage, data: bytes) -> str:
    """The Message-ID, or a digest of what identifies the message when it has none (or one too long)."""
    value = _header(message, "Message-ID")
    if value and len(value) <= 300:
        return value
    digest = hashlib.sha256()
    for name in ("From", "Date", "Subject", "Message-ID"):
        digest.update(_header(message, name).encode("utf-8", "replace") + b"\0")
    end = data.find(b"\r\n\r\n")
    end = end if end >= 0 else data.find(b"\n\n")
    digest.update(data[end:] if end >= 0 else data)
    return f"<sha256-{digest.hexdigest()}@ncpi-inbound.invalid>"


def automatic_reason(message: EmailMessage, envelope_from: str | None = None) -> str | None:
    """Why this message is automatic (RFC 3834 / RFC 6522 and the usual vendor headers), or None."""
    auto = _header(message, "Auto-Submitted")
    if auto and auto.split(";")[0].strip().lower() != "no":
        return f"Auto-Submitted: {auto}"
    for name in ("X-Autoreply", "X-Autorespond", "X-Autoresponse"):
        if message.get(name) is not None:
            return f"{name} header"
    precedence = _header(message, "Precedence").lower()
    if precedence in AUTOMATIC_PRECEDENCE:
        return f"Precedence: {precedence}"
    for name in ("List-Id", "List-Unsubscribe"):
        if message.get(name) is not None:
            return f"mailing-list mail ({name})"
    if message.get_content_type() == "multipart/report":
        report = message.get_param("report-type") or "report"
        return f"delivery or read report (multipart/report; {report})"
    return_path = message.get_all("Return-Path") or []
    if any(str(value).strip() in ("<>", "") for value in return_path):
        return "empty Return-Path (<>): a bounce or other automatic message"
    if envelope_from is not None and envelope_from.strip() in ("", "<>"):
        return "empty envelope sender (<>): a bounce or other automatic message"
    local = parseaddr(_header(message, "From"))[1].partition("@")[0].lower()
    if local in MAILER_DAEMONS:
        return f"sent by a mail system ({local})"
    return None


def _base_of(reply_to: str | None) -> tuple[str, str] | None:
    if not reply_to:
        return None
    address = parseaddr(reply_to)[1] or reply_to
    local, _, domain = address.rpartition("@")
    local = local.partition("+")[0]
    return (local.lower(), domain.lower()) if local and domain else None


def reply_tokens(addresses: list[str], reply_to: str | None) -> tuple[tuple[str, ...], bool]:
    """(distinct well-formed tokens, whether a malformed one was seen) among addresses on the reply address."""
    base = _base_of(reply_to)
    tokens: list[str] = []
    malformed = False
    for address in addresses:
        local, at, domain = address.strip().strip("<>").rpartition("@")
        if not at or "+" not in local:
            continue
        name, _, tag = local.partition("+")
        if base is not None and (name.lower(), domain.lower()) != base:
            continue
        if TOKEN_PATTERN.match(tag):
            if tag not in tokens:
                tokens.append(tag)
        else:
            malformed = True
    return tuple(tokens), malformed


def is_reply_address(address: str, reply_to: str | None) -> bool:
    """Whether an envelope recipient is the reply address, with or without a plus part."""
    base = _base_of(reply_to)
    if base is None:
        return True
    local, at, domain = address.strip().strip("<>").rpartition("@")
    return bool(at) and (local.partition("+")[0].lower(), domain.lower()) == base


def without_tokens(text: str) -> str:
    """Text safe to keep or show: plus parts of addresses, portal links and anything shaped like a
    raw token removed (a reply quotes the email it answers, links and reply address included)."""
    text = _PLUS_PART.sub("@", text)
    text = _PORTAL_LINK.sub(r"\1[link removed]", text)
    return _TOKEN_ANYWHERE.sub("[token removed]", text)


class _Text(HTMLParser):
    BLOCKS = {"p", "div", "br", "tr", "li", "h1", "h2", "h3", "h4", "blockquote", "table"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.skip = 0
        self.quote = 0

    def handle_starttag(self, tag, attrs):
        if tag in ("style", "script", "head"):
            self.skip += 1
        if tag == "blockquote":
            self.quote += 1
        if tag in self.BLOCKS:
            self.out.append("\n")

    def handle_endtag(self, tag):
        if tag in ("style", "script", "head") and self.skip:
            self.skip -= 1
        if tag == "blockquote" and self.quote:
            self.quote -= 1
        if tag in self.BLOCKS:
            self.out.append("\n")

    def handle_data(self, data):
        if not self.skip and not self.quote:  # a quoted original in HTML is a <blockquote>
            self.out.append(data)


def html_to_text(html: str) -> str:
    parser = _Text()
    parser.feed(html)
    parser.close()
    lines = [" ".join(line.split()) for line in "".join(parser.out).splitlines()]
    return "\n".join(lines)


_WROTE = re.compile(r"^\s*On\b.*\bwrote:\s*$", re.IGNORECASE)
_WROTE_START = re.compile(r"^\s*On\b.*\d", re.IGNORECASE)
_ORIGINAL = re.compile(r"^\s*-{2,}\s*(Original Message|Forwarded message)\s*-{2,}\s*$", re.IGNORECASE)
_OUTLOOK_FROM = re.compile(r"^\s*\*?From:\*?\s+\S")
_OUTLOOK_NEXT = re.compile(r"^\s*\*?(Sent|Date|To|Subject):\*?\s", re.IGNORECASE)
_UNDERSCORES = re.compile(r"^\s*_{10,}\s*$")


def strip_quoted(text: str) -> str:
    """The reply's own words: cut at the quoted original's header or a signature, '>' lines dropped."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    kept: list[str] = []
    for i, line in enumerate(lines):
        following = lines[i + 1] if i + 1 < len(lines) else ""
        if _WROTE.match(line) or (_WROTE_START.match(line) and following.strip().lower().endswith("wrote:")):
            break
        if _ORIGINAL.match(line) or _UNDERSCORES.match(line) or line == "-- ":
            break
        if _OUTLOOK_FROM.match(line) and _OUTLOOK_NEXT.match(following):
            break
        if line.lstrip().startswith(">"):
            continue
        kept.append(line.rstrip())
    while kept and not kept[-1].strip():
        kept.pop()
    while kept and not kept[0].strip():
        kept.pop(0)
    return "\n".join(kept)


def _part_text(part: EmailMessage) -> str:
    try:
        return part.get_content()
    except (LookupError, UnicodeError, AssertionError):  # an unknown or lying charset
        payload = part.get_payload(decode=True) or b""
        return payload.decode("utf-8", "replace")


def _is_attachment(part: EmailMessage, body: EmailMessage | None, cids: set[str]) -> bool:
    if part.is_multipart() or part is body:
        return False
    if part.get_content_type() in ("message/delivery-status", "message/disposition-notification"):
        return False
    name = part.get_filename()
    disposition = part.get_content_disposition()
    if disposition == "attachment":
        return True
    if not name:
        return False
    content_id = (part.get("Content-ID") or "").strip().strip("<>")
    if disposition == "inline" and part.get_content_maintype() == "image" and content_id and content_id in cids:
        return False  # a signature logo shown inside the HTML
    return True


def parse_reply(
    data: bytes, *, reply_to: str | None, envelope_from: str | None = None, envelope_to: list[str] | tuple[str, ...] = ()
) -> ParsedReply:
    message = parse_message(data)
    froms = [a for _, a in getaddresses([str(v) for v in (message.get_all("From") or [])]) if a]
    sender_problem = None
    if len(froms) != 1 or "@" not in froms[0]:
        sender_problem = "no From address" if not froms else f"{len(froms)} From addresses"
        sender = froms[0].lower() if froms and "@" in froms[0] else ""
    else:
        sender = froms[0].lower()
        on_behalf = parseaddr(_header(message, "Sender"))[1].lower()
        if on_behalf and on_behalf != sender:
            sender_problem = f"sent by {on_behalf} on behalf of {sender}"
    recipients: list[str] = [a for a in envelope_to if a]
    for name in RECIPIENT_HEADERS:
        recipients += [a for _, a in getaddresses([str(v) for v in (message.get_all(name) or [])]) if a]
    tokens, malformed = reply_tokens(recipients, reply_to)

    body = message.get_body(preferencelist=("plain", "html"))
    if body is not None and body.get_content_disposition() == "attachment":
        body = None
    text = ""
    cids: set[str] = set()
    if body is not None:
        raw_text = _part_text(body)
        if body.get_content_subtype() == "html":
            cids = set(re.findall(r"cid:([^\"'>\s)]+)", raw_text))
            raw_text = html_to_text(raw_text)
        text = strip_quoted(raw_text)
    html_part = message.get_body(preferencelist=("html",))
    if html_part is not None and html_part is not body:
        cids = set(re.findall(r"cid:([^\"'>\s)]+)", _part_text(html_part)))
    attachments = []
    for part in message.walk():
        if _is_attachment(part, body, cids):
            payload = part.get_payload(decode=True)
            if payload is None:
                continue
            attachments.append(Attachment(part.get_filename() or "attachment", part.get_content_type(), payload))
    return ParsedReply(
        message_id=message_id_of(message, data), sender=sender, sender_problem=sender_problem,
        subject=_header(message, "Subject"), recipients=tuple(recipients), tokens=tokens, malformed_token=malformed,
        automatic=automatic_reason(message, envelope_from), text=text, attachments=tuple(attachments),
    )


def claim_from(first_line: str) -> str | None:
    """The claim a first line states ("Implemented.", "R2: in progress", "Status: not started"), or None."""
    line = " ".join(first_line.lower().replace("_", " ").split())
    line = re.sub(r"^(r\d{1,3}\s*[:,.\-–—]?\s*)", "", line)
    line = re.sub(r"^((claim|status)\s*[:\-–—]\s*)", "", line)
    for words, claim in CLAIM_WORDS:
        if line == words or re.match(rf"^{re.escape(words)}(?![a-z])", line):
            return claim
    return None


def references(text: str) -> tuple[set[str], set[str]]:
    """(inspection IDs, R-numbers) that a subject or a line names, e.g. 'CUM-2017-01-26-R2' or 'recommendation R2'."""
    inspections, refs = set(), set()
    for inspection, ref in _REC_ID.findall(text):
        inspections.add(inspection)
        if ref:
            refs.add(ref)
    stripped = _REC_ID.sub(" ", text)
    refs |= {f"R{int(n)}" for n in _R_REF.findall(stripped)}
    return inspections, refs


_SUBJECT_REFERENCE = re.compile(r"\[([A-Z]{3}-\d{4}-\d{2}-\d{2})(?:-(R\d{1,3}))?\]")


def subject_reference(subject: str) -> tuple[str, str | None] | None:
    """(inspection ID, recommendation ID or None) of the "[CUM-2017-01-26-R2]" tag every email's
    subject ends with (ncpi_workflow.emails.reference_of), kept in a reply's "Re: ..." subject; the
    last tag when there are several (an inspector's own tag comes after a forwarded one). Only a
    fallback for triage when a mail system strips the reply token: it never records anything."""
    found = _SUBJECT_REFERENCE.findall(subject or "")
    if not found:
        return None
    inspection, ref = found[-1]
    return inspection, (f"{inspection}-{ref}" if ref else None)


ITEM_WORDS = (
    ("action_plan", re.compile(r"\baction[ -]plan\b", re.I)),
    ("pcc_response", re.compile(r"\b(pcc|police and crime commissioner)('s)?\b.*\bresponse\b|\bpcc response\b", re.I)),
    ("immediate_update", re.compile(r"\bimmediate(ly)?\b.*\bupdate\b|\bupdate\b.*\bimmediate(ly)?\b", re.I)),
)
_WEB_ADDRESS = re.compile(r"https?://[^\s<>\"')\]]+", re.I)


def items_named(text: str) -> set[str]:
    """The report-level items a line names: 'Action plan attached', 'The PCC's response: https://...'."""
    return {item for item, pattern in ITEM_WORDS if pattern.search(text or "")}


def first_web_address(text: str) -> str | None:
    """The first http(s) address in a text, without trailing punctuation."""
    found = _WEB_ADDRESS.search(text or "")
    return found.group(0).rstrip(".,;:!?") if found else None
