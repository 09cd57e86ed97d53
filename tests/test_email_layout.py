"""Every email lays out within a phone's width (320 px): no sideways scrolling.

The browser tests load each example in docs/emails/ (and every kind rendered with a 300-character
word in each free-text value) in Debian's headless Chromium at 320x640, through Python Playwright,
and check that the page is no wider than the viewport. Playwright's own browser builds are never
used (no `playwright install`): the tests need /usr/bin/chromium. Without it they skip, except in
CI (CI=true), where they fail: .ci/run installs chromium when it is missing.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from ncpi_workflow import emails
from ncpi_workflow.email_examples import escalation_examples, example_contexts
from ncpi_workflow.emails import DigestItem, EmailContext, render_email
from tests.conftest import IN_CI, ROOT

DOCS = ROOT / "docs" / "emails"
CHROMIUM = Path("/usr/bin/chromium")
PHONE = {"width": 320, "height": 640}
LONG_WORD = "Unbroken" + "x" * 292  # 300 characters, no space, no hyphen
assert len(LONG_WORD) == 300

DOC_PAGES = sorted(DOCS.glob("*.html"))


def all_examples() -> list[tuple[str, EmailContext]]:
    named = list(example_contexts().items())
    named += [(f"escalation-{rung}", ctx) for rung, ctx in escalation_examples().items()]
    return named


def with_long_words(ctx: EmailContext) -> EmailContext:
    """The context with a 300-character word inside every free-text value a person may type or a
    report may carry (names, titles, texts, reasons, errors, addresses)."""
    ctx = copy.deepcopy(ctx)

    def longer(value: str) -> str:
        return f"{value} {LONG_WORD} end" if value else value

    for name in ("force_name", "inspection_title", "deadline_label", "evidence_what", "reopen_reason",
                 "reopened_by", "triggered_by"):
        if getattr(ctx, name):
            setattr(ctx, name, longer(getattr(ctx, name)))
    ctx.inspection_id = ctx.inspection_id and f"{ctx.inspection_id}-{LONG_WORD}"
    ctx.reply_to = ctx.reply_to and f"{LONG_WORD}@inspectorate.example"
    ctx.source_url = ctx.source_url and f"https://www.justiceinspectorates.gov.uk/{LONG_WORD}/"
    facts = [r for r in [ctx.recommendation, *ctx.recommendations] if r is not None]
    for r in facts:
        r.text = longer(r.text)
    if ctx.decision is not None:
        ctx.decision.rationale = longer(ctx.decision.rationale)
        ctx.decision.decided_by = longer(ctx.decision.decided_by)
    if ctx.failed_notification is not None:
        failed = ctx.failed_notification
        failed["subject"] = longer(failed["subject"])
        failed["error"] = longer(failed["error"])
        failed["to"] = [f"{LONG_WORD}@cumbria.police.example", *failed["to"]]
    if ctx.acknowledgement is not None:  # what a force's reply carried: its subject, its files' names
        ack = ctx.acknowledgement
        ack["original_subject"] = longer(ack["original_subject"])
        for a in [*ack["recorded"], *ack["refused"]]:
            a["filename"] = f"{LONG_WORD}.pdf"
        for a in ack["refused"]:
            a["reason"] = longer(a["reason"])
    for items in ctx.digest.values():
        items[:] = [dataclasses.replace(i, what=longer(i.what), inspection_id=f"{i.inspection_id}{LONG_WORD}")
                    for i in items]
    if ctx.kind == "digest":
        ctx.digest["decisions_awaited"] = [DigestItem("CUM", LONG_WORD, longer("Recommendation R2"))]
    return ctx


# --- without a browser ---------------------------------------------------------------------------


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[tuple[str, str]] = []
        self._href: str | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            self._href, self._text = dict(attrs).get("href", ""), []

    def handle_data(self, data):
        if self._href is not None:
            self._text.append(data)

    def handle_endtag(self, tag):
        if tag == "a" and self._href is not None:
            self.links.append((self._href, "".join(self._text).strip()))
            self._href = None


def links(html: str) -> list[tuple[str, str]]:
    parser = _Links()
    parser.feed(html)
    return parser.links


@pytest.mark.parametrize("name,ctx", all_examples(), ids=[name for name, _ in all_examples()])
def test_links_have_words_for_text_not_a_bare_url(name, ctx):
    html = render_email(ctx).html
    found = links(html)
    if ctx.kind != "digest":
        assert any(href == ctx.source_url for href, _ in found), "the report is linked"
    for href, text in found:
        assert text, f"empty link text for {href}"
        assert "://" not in text and not text.startswith("www."), f"bare URL as link text: {text!r}"
        assert text != href


def test_no_template_sets_a_fixed_width_wider_than_a_phone():
    for path in sorted(emails.PACKAGE_TEMPLATES.glob("*.html.j2")):
        source = path.read_text(encoding="utf-8")
        for match in re.finditer(r"(?<![-\w])(?:min-)?width\s*[:=]\s*\"?(\d+)(px)?\b", source):
            assert int(match.group(1)) <= 320, f"{path.name}: {match.group(0)}"


def test_long_words_may_break_everywhere():
    """The body and the containers say so, for clients that drop the body's style (Gmail does)."""
    for name, ctx in all_examples():
        html = render_email(ctx).html
        body = re.search(r"<body[^>]*>", html).group(0)
        assert "overflow-wrap:anywhere" in body and "word-break:break-word" in body, name
        content_cells = re.findall(r"<td style=\"[^\"]*padding:20px[^\"]*\"", html)
        assert content_cells and all("overflow-wrap:anywhere" in cell for cell in content_cells), name


# --- in a browser at phone width -----------------------------------------------------------------


def _unavailable(reason: str):
    if IN_CI:
        pytest.fail(f"{reason}, and CI=true: the phone-width layout test must run in CI (.ci/run installs chromium)")
    pytest.skip(f"{reason} (apt-get install chromium; pip install playwright); CI fails instead of skipping")


@pytest.fixture(scope="module")
def phone():
    """A 320x640 page in Debian's headless Chromium."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("Python Playwright is not installed")
    if not CHROMIUM.exists():
        _unavailable(f"{CHROMIUM} is missing")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport=PHONE)
            yield page
        finally:
            browser.close()


_MEASURE = """() => {
  const viewport = window.innerWidth;
  const wide = [];
  for (const el of document.body.querySelectorAll('*')) {
    const r = el.getBoundingClientRect();
    if (r.width > 0 && (r.right > viewport + 0.5 || r.left < -0.5)) {
      wide.push(el.tagName.toLowerCase() + ' ' + Math.round(r.left) + '..' + Math.round(r.right) + ': '
                + (el.textContent || '').trim().slice(0, 60));
    }
  }
  return {
    viewport: viewport,
    html: document.documentElement.scrollWidth,
    body: document.body.scrollWidth,
    wide: wide.slice(0, 5),
  };
}"""


def assert_fits(page, what: str) -> None:
    m = page.evaluate(_MEASURE)
    assert m["viewport"] == PHONE["width"]
    assert m["html"] <= PHONE["width"] and m["body"] <= PHONE["width"] and not m["wide"], (
        f"{what} lays out {m['html']} px wide (body {m['body']} px) at {PHONE['width']} px: {m['wide']}"
    )


def test_every_kind_has_an_example_page():
    assert {p.stem for p in DOC_PAGES} == {name for name, _ in all_examples()}


@pytest.mark.parametrize("path", DOC_PAGES, ids=[p.name for p in DOC_PAGES])
def test_example_fits_a_phone(phone, path):
    phone.goto(path.resolve().as_uri())
    assert phone.title()  # the page loaded
    assert_fits(phone, f"docs/emails/{path.name}")


@pytest.mark.parametrize("name,ctx", all_examples(), ids=[name for name, _ in all_examples()])
def test_a_300_character_word_does_not_widen_the_page(phone, tmp_path, name, ctx):
    email = render_email(with_long_words(ctx))
    assert LONG_WORD in email.html
    page = tmp_path / f"{name}.html"
    page.write_text(email.html, encoding="utf-8")
    phone.goto(page.as_uri())
    assert_fits(phone, f"{name} with a 300-character word")
    # The word is broken across lines, not hidden: its text is all there, in a box within the page.
    shown = phone.evaluate("() => document.body.innerText.replace(/\\s+/g, '')")
    assert LONG_WORD in shown
