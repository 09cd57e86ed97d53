"""ncpi_workflow.uploads: every file a force sends is judged by its content, within the limits, under a
safe name, through the optional scan, and a refused one leaves nothing behind."""

from __future__ import annotations

import hashlib
import io
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest

from ncpi_workflow.settings import Settings
from ncpi_workflow.uploads import CheckedUpload, UploadRefused, check_upload, clean_filename

PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + b"\x00" * 40
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\x00" * 40
GIF = b"GIF89a" + b"\x01\x00\x01\x00" + b"\x00" * 20
EXE = b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff\x00\x00" + b"\x00" * 44 + b"\x80\x00\x00\x00" + b"PE\x00\x00" + b"\x00" * 200
ELF = b"\x7fELF\x02\x01\x01" + b"\x00" * 200


def office(kind: str, extra: dict[str, bytes] | None = None, compression=zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as z:
        if kind in ("odt", "ods"):
            sub = "text" if kind == "odt" else "spreadsheet"
            z.writestr(zipfile.ZipInfo("mimetype"), f"application/vnd.oasis.opendocument.{sub}")
            z.writestr("content.xml", "<office:document-content/>")
        elif kind == "docx":
            z.writestr("[Content_Types].xml", "<Types/>")
            z.writestr("word/document.xml", "<w:document><w:body>Action plan</w:body></w:document>")
        elif kind == "xlsx":
            z.writestr("[Content_Types].xml", "<Types/>")
            z.writestr("xl/workbook.xml", "<workbook/>")
        elif kind == "zip":
            z.writestr("notes.txt", "just an archive")
        for name, data in (extra or {}).items():
            z.writestr(name, data)
    return buffer.getvalue()


@pytest.fixture
def settings(tmp_path, monkeypatch):
    # Temporary copies go to a folder of the test's own, so that what is left behind can be counted.
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    return Settings(data_dir=tmp_path / "data", database_url=f"sqlite+aiosqlite:///{tmp_path / 'x.db'}")


def leftovers(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "tmp").iterdir())


@pytest.mark.parametrize("name,content,content_type", [
    ("action-plan.pdf", PDF, "application/pdf"),
    ("chart.png", PNG, "image/png"),
    ("photo.JPG", JPEG, "image/jpeg"),
    ("photo.jpeg", JPEG, "image/jpeg"),
    ("anim.gif", GIF, "image/gif"),
    ("notes.txt", "Progress: training for 120 officers — done.\r\n\tNext: audit.\n".encode(), "text/plain"),
    ("figures.csv", b"\xef\xbb\xbfmonth,referrals\n2017-01,42\n", "text/csv"),
    ("plan.docx", office("docx"), "application/vnd.openxmlformats-officedocument.wordprocessingml.document"),
    ("figures.xlsx", office("xlsx"), "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"),
    ("plan.odt", office("odt"), "application/vnd.oasis.opendocument.text"),
    ("figures.ods", office("ods"), "application/vnd.oasis.opendocument.spreadsheet"),
])
def test_accepted_kinds_by_content(settings, tmp_path, name, content, content_type):
    checked = check_upload(content, name, settings)
    try:
        assert isinstance(checked, CheckedUpload)
        assert (checked.filename, checked.content_type, checked.size_bytes) == (name, content_type, len(content))
        assert checked.sha256 == hashlib.sha256(content).hexdigest()
        assert checked.path.read_bytes() == content
        assert oct(checked.path.stat().st_mode & 0o777) == "0o600"
    finally:
        checked.discard()
    assert leftovers(tmp_path) == []


def test_a_path_source_is_copied_and_the_copy_is_private(settings, tmp_path):
    source = tmp_path / "plan.pdf"
    source.write_bytes(PDF)
    with check_upload(source, "plan.pdf", settings) as checked:
        assert checked.path != source and checked.path.read_bytes() == PDF
        source.write_bytes(b"changed after the check")
        assert checked.path.read_bytes() == PDF  # what was checked is what is kept
    assert leftovers(tmp_path) == [] and source.exists()


REFUSED = [
    ("plan.pdf", EXE, "plan.pdf: the name says a PDF document but the content is a Windows program (EXE)"),
    ("plan.pdf", ELF, "plan.pdf: the name says a PDF document but the content is a Linux program (ELF)"),
    ("plan.pdf", b"#!/bin/sh\nrm -rf /\n", "plan.pdf: the name says a PDF document but the content is plain text; name it plan.txt"),
    ("notes.txt", PDF, "notes.txt: the name says plain text but the content is a PDF document; name it notes.pdf"),
    ("chart.png", JPEG, "chart.png: the name says a PNG image but the content is a JPEG image; name it chart.jpg"),
    ("plan.docx", office("zip"), "plan.docx: the name says a Word document (DOCX) but the content is a ZIP archive"),
    ("plan.docx", office("xlsx"), "plan.docx: the name says a Word document (DOCX) but the content is an Excel workbook (XLSX); name it plan.xlsx"),
    ("notes.txt", b"line one\x00\x00binary", "notes.txt: the name says plain text but the content is binary data of no type accepted here"),
    ("notes.txt", "caf\u00e9".encode("latin-1"), "notes.txt: the name says plain text but the content is binary data of no type accepted here"),
    ("notes.txt", b"escape \x1b[31m red", "notes.txt: the name says plain text but the content is binary data of no type accepted here"),
    ("tool.exe", EXE, "tool.exe: files ending .exe are not accepted; send PDF"),
    ("archive.zip", office("zip"), "archive.zip: files ending .zip are not accepted"),
    ("README", b"text", "README: files without an extension are not accepted"),
    ("empty.pdf", b"", "empty.pdf: the file is empty"),
    ("broken.docx", b"PK\x03\x04" + b"\x00" * 100, "broken.docx: the document is damaged"),
]


@pytest.mark.parametrize("name,content,reason", REFUSED, ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(REFUSED)])
def test_refused_by_content_with_the_reason_and_nothing_left(settings, tmp_path, name, content, reason):
    with pytest.raises(UploadRefused) as refused:
        check_upload(content, name, settings)
    assert refused.value.reason.startswith(reason), refused.value.reason
    assert "\n" not in refused.value.reason
    assert leftovers(tmp_path) == []


def test_a_30_mb_file_is_refused_as_bytes_and_as_a_file(settings, tmp_path):
    big = PDF + b"0" * (30 * 1024 * 1024)
    with pytest.raises(UploadRefused, match=r"^big\.pdf: the file is 31,457,\d+ bytes, over the 26,214,400-byte limit$"):
        check_upload(big, "big.pdf", settings)
    path = tmp_path / "big.pdf"
    path.write_bytes(big)
    with pytest.raises(UploadRefused, match=r"^big\.pdf: the file is over the 26,214,400-byte limit$"):
        check_upload(path, "big.pdf", settings)
    assert leftovers(tmp_path) == []


def test_zip_bombs_are_refused(settings, tmp_path):
    # One part of 50 MiB of zeros, compressed about a thousand times.
    bomb = office("docx", {"word/media/zeros.bin": b"\x00" * (50 * 1024 * 1024)})
    assert len(bomb) < 200_000
    with pytest.raises(UploadRefused, match=r"^bomb\.docx: a part of the document is compressed [\d,]+ times, over the limit of 100 \(it may be a zip bomb\)$"):
        check_upload(bomb, "bomb.docx", settings)
    # Too much in all, each part within the ratio.
    tight = settings.model_copy(update={"upload_zip_max_bytes": 100_000})
    many_kb = office("docx", {f"word/part{i}.xml": bytes(range(256)) * 80 for i in range(10)})
    with pytest.raises(UploadRefused, match=r"^plan\.docx: the document unpacks to [\d,]+ bytes, over the 100,000-byte limit"):
        check_upload(many_kb, "plan.docx", tight)
    # Too many parts.
    crowded = office("docx", {f"word/p{i}.xml": b"x" for i in range(60)})
    with pytest.raises(UploadRefused, match=r"^plan\.docx: the document holds 62 parts, over the limit of 50"):
        check_upload(crowded, "plan.docx", settings.model_copy(update={"upload_zip_max_entries": 50}))
    assert leftovers(tmp_path) == []


def test_a_zip_whose_headers_lie_is_refused(settings, tmp_path):
    """A part that says it is small but does not decompress to what it says (its checksum)."""
    data = bytearray(office("docx", {"word/extra.xml": b"<x>" + b"a" * 5000 + b"</x>"}))
    # Corrupt the compressed bytes of the last entry (after its local header), keeping the headers.
    at = data.rfind(b"word/extra.xml", 0, data.find(b"PK\x01\x02")) + len("word/extra.xml") + 5
    data[at:at + 20] = b"\xff" * 20
    with pytest.raises(UploadRefused, match=r"^plan\.docx: the document is damaged"):
        check_upload(bytes(data), "plan.docx", settings)
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("raw,expected", [
    ("C:\\fakepath\\action plan.pdf", "action plan.pdf"),
    ("reports/2017/plan.pdf", "plan.pdf"),
    ("  .hidden.pdf ", "hidden.pdf"),
    ("a   b\u00a0c.pdf", "a b c.pdf"),
    ("what?<is>this:.pdf", "what__is_this_.pdf"),
    ("x" * 300 + ".pdf", "x" * 251 + ".pdf"),
    ("Cafe\u0301.pdf", "Caf\u00e9.pdf"),
])
def test_names_are_sanitised(raw, expected):
    assert clean_filename(raw) == expected


@pytest.mark.parametrize("raw,reason", [
    ("../../etc/passwd.pdf", "the file name ../../etc/passwd.pdf points outside its folder ('..')"),
    ("..\\plan.pdf", "the file name ..\\plan.pdf points outside its folder ('..')"),
    ("plan\n.pdf", "the file name plan\\n.pdf holds a line break or a control character"),
    ("plan\r\nSubject: x.pdf", "the file name plan\\r\\nSubject: x.pdf holds a line break"),
    ("plan\x00.pdf", "the file name plan\\x00.pdf holds a line break or a control character"),
    ("invoice\u202efdp.exe", "the file name invoice\\u202efdp.exe holds a line break or a control character"),
    ("plan\u2028.pdf", "the file name plan\\u2028.pdf holds a line break"),
    ("", "the file has no name"),
    ("folder/", "the file name folder/ has no name left"),
    ("...", "the file name ... has no name left"),
])
def test_dangerous_names_are_refused(settings, tmp_path, raw, reason):
    with pytest.raises(UploadRefused) as refused:
        check_upload(PDF, raw, settings)
    assert refused.value.reason.startswith(reason), refused.value.reason
    assert "\n" not in refused.value.reason and "\r" not in refused.value.reason
    assert leftovers(tmp_path) == []


def test_the_scan_hook(settings, tmp_path):
    script = tmp_path / "scan.py"
    script.write_text(
        "import sys\n"
        "data = open(sys.argv[-1], 'rb').read()\n"
        "if b'EICAR' in data:\n"
        "    print(sys.argv[-1] + ': Eicar-Test-Signature FOUND')\n"
        "    print('second line')\n"
        "    sys.exit(1)\n"
        "print('OK')\n"
    )
    scanning = settings.model_copy(update={"upload_scan_command": f"{sys.executable} {script}"})
    with check_upload(PDF, "plan.pdf", scanning) as checked:
        assert checked.sha256 == hashlib.sha256(PDF).hexdigest()
    with pytest.raises(UploadRefused, match=r"^plan\.pdf: refused by the upload scan: .*ncpi-upload-.*: Eicar-Test-Signature FOUND$"):
        check_upload(PDF + b"EICAR", "plan.pdf", scanning)
    missing = settings.model_copy(update={"upload_scan_command": "/nonexistent/clamdscan --no-summary"})
    with pytest.raises(UploadRefused, match=r"^plan\.pdf: not accepted: the upload scan \(/nonexistent/clamdscan, NCPI_UPLOAD_SCAN_COMMAND\) cannot be run$"):
        check_upload(PDF, "plan.pdf", missing)
    slow = settings.model_copy(update={"upload_scan_command": f"{sys.executable} -c 'import time; time.sleep(30)'",
                                       "upload_scan_timeout": 0.5})
    with pytest.raises(UploadRefused, match=r"took longer than 0\.5 s"):
        check_upload(PDF, "plan.pdf", slow)
    assert leftovers(tmp_path) == []


def test_the_scan_is_off_by_default():
    assert Settings().upload_scan_command is None
