"""Every file a force sends is checked here before anything is kept: by the portal, by an email reply's
attachment and by `ncpi evidence` alike.

`check_upload(source, filename, settings)` copies the file into a private temporary file (at most
`evidence_max_bytes`, NCPI_EVIDENCE_MAX_BYTES), and judges it by its content, never by its name:

- allowed: PDF, PNG, JPEG, GIF, plain text and CSV (UTF-8 without NUL or other control characters),
  and the office documents DOCX, XLSX, ODT and ODS, which are ZIP containers: those are opened and
  refused when they hold more than `upload_zip_max_entries` entries, more than `upload_zip_max_bytes`
  uncompressed, an entry over 1 MiB compressed more than `upload_zip_max_ratio` times (a zip bomb), an
  encrypted entry, or an entry that does not decompress to its checksum;
- the name's extension must agree with the content (an executable renamed `.pdf` is refused, and
  says what it is);
- the name is sanitised: the folders a browser may send are dropped, a name with a line break, a
  control or direction-override character, or a `..` folder is refused; long names are shortened,
  keeping the extension;
- when `upload_scan_command` (NCPI_UPLOAD_SCAN_COMMAND) is set, it is run with the file's path as
  its last argument, and a non-zero exit (or one that cannot be run, or takes longer than
  `upload_scan_timeout`) refuses the file with the first line it printed. Off by default.

A refusal is `UploadRefused` with a one-line reason naming the file; the temporary copy is gone by
then, so a refused upload leaves nothing behind. An accepted one is kept by the caller (by SHA-256,
`ncpi_workflow.evidence_files.keep_file`) and its copy discarded (`CheckedUpload.discard`, or use it
as a context manager).
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import subprocess
import tempfile
import unicodedata
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from ncpi_workflow.errors import UserError
from ncpi_workflow.lifecycle import FILENAME_MAX, printable

CHUNK = 1 << 20
ENTRY_RATIO_FLOOR = 1 << 20
"""Entries smaller than this uncompressed are not judged by their ratio (XML compresses well)."""


class UploadRefused(UserError):
    """A file refused before anything was kept; `reason` is one line, shown to the user."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class CheckedUpload:
    path: Path
    """A private temporary copy (mode 0600): the caller keeps it, then discards it."""
    filename: str
    """The sanitised name."""
    content_type: str
    """From the content."""
    sha256: str
    size_bytes: int

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> "CheckedUpload":
        return self

    def __exit__(self, *exc) -> None:
        self.discard()


@dataclass(frozen=True)
class Kind:
    name: str
    """What people call it: 'a PDF document'."""
    content_type: str
    extensions: tuple[str, ...]


PDF = Kind("a PDF document", "application/pdf", (".pdf",))
PNG = Kind("a PNG image", "image/png", (".png",))
JPEG = Kind("a JPEG image", "image/jpeg", (".jpg", ".jpeg"))
GIF = Kind("a GIF image", "image/gif", (".gif",))
TEXT = Kind("plain text", "text/plain", (".txt", ".text", ".md"))
CSV = Kind("a CSV table", "text/csv", (".csv",))
DOCX = Kind("a Word document (DOCX)", "application/vnd.openxmlformats-officedocument.wordprocessingml.document", (".docx",))
XLSX = Kind("an Excel workbook (XLSX)", "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet", (".xlsx",))
ODT = Kind("an OpenDocument text (ODT)", "application/vnd.oasis.opendocument.text", (".odt",))
ODS = Kind("an OpenDocument spreadsheet (ODS)", "application/vnd.oasis.opendocument.spreadsheet", (".ods",))
ACCEPTED = (PDF, PNG, JPEG, GIF, TEXT, CSV, DOCX, XLSX, ODT, ODS)
EXTENSIONS = {ext: kind for kind in ACCEPTED for ext in kind.extensions}
ACCEPTED_WORDS = "PDF, Word (DOCX), Excel (XLSX), OpenDocument (ODT, ODS), PNG, JPEG, GIF, plain text or CSV"

_NAMES = {
    "exe": "a Windows program (EXE)", "elf": "a Linux program (ELF)", "zip": "a ZIP archive", "rar": "a RAR archive",
    "7z": "a 7-Zip archive", "gz": "a gzip archive", "tar": "a tar archive", "doc": "an old Word document (DOC)",
    "xls": "an old Excel workbook (XLS)", "ppt": "a PowerPoint presentation (PPT)", "pptx": "a PowerPoint presentation (PPTX)",
    "swf": "a Flash file", "wasm": "a WebAssembly program", "crx": "a browser extension", "cab": "a CAB archive",
    "deb": "a Debian package", "rpm": "an RPM package", "sqlite": "an SQLite database", "rtf": "an RTF document",
}
# Other program formats filetype does not know.
_PROGRAMS = ((b"\xcf\xfa\xed\xfe", "a macOS program (Mach-O)"), (b"\xce\xfa\xed\xfe", "a macOS program (Mach-O)"),
             (b"\xca\xfe\xba\xbe", "a Java class or macOS program"), (b"#!", "a script"))


# ---------------------------------------------------------------- names


def clean_filename(raw: str | None) -> str:
    """The name an upload is recorded under: no folders, no control characters, at most FILENAME_MAX
    characters (the stem shortened, the extension kept). UploadRefused when nothing safe is left."""
    if raw is None or not raw.strip():
        raise UploadRefused("the file has no name; give it one (for example action-plan.pdf)")
    shown = printable(raw)
    for ch in raw:
        if "\ud800" <= ch <= "\udfff":
            raise UploadRefused(f"the file name {shown} is not valid UTF-8; rename the file")
        if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp"):
            raise UploadRefused(f"the file name {shown} holds a line break or a control character; rename the file")
    parts = re.split(r"[\\/]", raw)
    if any(part.strip() == ".." for part in parts):
        raise UploadRefused(f"the file name {shown} points outside its folder ('..'); send the file under its own name")
    name = unicodedata.normalize("NFC", parts[-1])
    name = re.sub(r"\s+", " ", name).strip().lstrip(".").strip()
    name = re.sub(r'[<>:"|?*]', "_", name)
    if not name:
        raise UploadRefused(f"the file name {shown} has no name left once its folders are removed; rename the file")
    if len(name) > FILENAME_MAX:
        stem, ext = os.path.splitext(name)
        ext = ext if len(ext) <= 16 else ""
        name = stem[: FILENAME_MAX - len(ext)].rstrip() + ext
    return name


# ---------------------------------------------------------------- content


def _text_kind(path: Path) -> bool:
    """UTF-8 (a byte-order mark allowed) without NUL or control characters other than tab, line breaks and form feed."""
    data = path.read_bytes()
    if re.search(rb"[\x00-\x08\x0b\x0e-\x1f\x7f]", data):
        return False
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _what_else(head: bytes) -> str:
    """What a refused file's content is, as people say it."""
    import filetype

    for magic, words in _PROGRAMS:
        if head.startswith(magic):
            return words
    guessed = filetype.guess(head)
    if guessed is not None:
        return _NAMES.get(guessed.extension, f"a {guessed.extension.upper()} file ({guessed.mime})")
    return "binary data of no type accepted here"


def _zip_kind(path: Path, name: str, settings) -> Kind | str:
    """An office document's kind, after the zip-bomb checks; or what else the archive is (a string)."""
    max_entries = settings.upload_zip_max_entries
    max_bytes = settings.upload_zip_max_bytes
    max_ratio = settings.upload_zip_max_ratio
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            if len(infos) > max_entries:
                raise UploadRefused(f"{name}: the document holds {len(infos):,} parts, over the limit of {max_entries:,} "
                                    "(it may be a zip bomb)")
            total = sum(i.file_size for i in infos)
            if total > max_bytes:
                raise UploadRefused(f"{name}: the document unpacks to {total:,} bytes, over the {max_bytes:,}-byte limit "
                                    "(it may be a zip bomb)")
            for info in infos:
                if info.flag_bits & 0x1:
                    raise UploadRefused(f"{name}: the document is encrypted or password-protected; send it unprotected")
                if info.file_size > ENTRY_RATIO_FLOOR and info.file_size > max_ratio * max(info.compress_size, 1):
                    ratio = info.file_size / max(info.compress_size, 1)
                    raise UploadRefused(f"{name}: a part of the document is compressed {ratio:,.0f} times, over the limit "
                                        f"of {max_ratio:,.0f} (it may be a zip bomb)")
            names = {i.filename for i in infos}
            # Every entry decompressed (bounded by the sizes checked above) and its checksum checked.
            read = 0
            for info in infos:
                with archive.open(info) as entry:
                    while chunk := entry.read(CHUNK):
                        read += len(chunk)
                        if read > max_bytes:
                            raise UploadRefused(f"{name}: the document unpacks to over {max_bytes:,} bytes (it may be a zip bomb)")
            mimetype = archive.read("mimetype").strip() if "mimetype" in names else b""
    except UploadRefused:
        raise
    except (zipfile.BadZipFile, zlib.error, NotImplementedError, EOFError, OSError, ValueError, RuntimeError):
        raise UploadRefused(f"{name}: the document is damaged (its ZIP container cannot be read); save it again and resend") from None
    if "[Content_Types].xml" in names and "word/document.xml" in names:
        return DOCX
    if "[Content_Types].xml" in names and "xl/workbook.xml" in names:
        return XLSX
    if mimetype == ODT.content_type.encode():
        return ODT
    if mimetype == ODS.content_type.encode():
        return ODS
    if "[Content_Types].xml" in names and "ppt/presentation.xml" in names:
        return _NAMES["pptx"]
    return "a ZIP archive"


def identify(path: Path, name: str, settings) -> Kind | str:
    """The accepted kind of a file by its content, or what it is instead (a string)."""
    with open(path, "rb") as handle:
        head = handle.read(8192)
    if head.startswith(b"%PDF"):
        return PDF
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return PNG
    if head.startswith(b"\xff\xd8\xff"):
        return JPEG
    if head.startswith((b"GIF87a", b"GIF89a")):
        return GIF
    if head.startswith(b"PK\x03\x04"):
        return _zip_kind(path, name, settings)
    if _text_kind(path):
        return TEXT
    return _what_else(head)


# ---------------------------------------------------------------- the copy and the scan


def _copy(source: Path | bytes, name: str, limit: int) -> tuple[Path, str, int]:
    """A private temporary copy, its SHA-256 and size; the limit is checked before and while copying."""
    from ncpi_workflow.evidence_files import open_evidence

    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) > limit:
            raise UploadRefused(f"{name}: the file is {len(source):,} bytes, over the {limit:,}-byte limit")
        chunks = (bytes(source),)
        source_fd = None
    else:
        try:
            source_fd, size = open_evidence(Path(source), limit)
        except UserError as exc:
            message = str(exc)
            if "over the" in message:
                raise UploadRefused(f"{name}: the file is over the {limit:,}-byte limit") from None
            raise UploadRefused(message) from None
        handle = os.fdopen(source_fd, "rb")
        chunks = iter(lambda: handle.read(CHUNK), b"")
    fd, temp = tempfile.mkstemp(prefix="ncpi-upload-", suffix=".part")
    path = Path(temp)
    digest = hashlib.sha256()
    size = 0
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                size += len(chunk)
                if size > limit:
                    raise UploadRefused(f"{name}: the file is over the {limit:,}-byte limit")
                digest.update(chunk)
                out.write(chunk)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    finally:
        if source_fd is not None:
            handle.close()
    return path, digest.hexdigest(), size


def _scan(path: Path, name: str, settings) -> None:
    command = (getattr(settings, "upload_scan_command", None) or "").strip()
    if not command:
        return
    argv = shlex.split(command) + [str(path)]
    try:
        result = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=settings.upload_scan_timeout)
    except FileNotFoundError:
        raise UploadRefused(f"{name}: not accepted: the upload scan ({argv[0]}, NCPI_UPLOAD_SCAN_COMMAND) cannot be run") from None
    except subprocess.TimeoutExpired:
        raise UploadRefused(f"{name}: not accepted: the upload scan took longer than {settings.upload_scan_timeout:g} s") from None
    except OSError as exc:
        raise UploadRefused(f"{name}: not accepted: the upload scan cannot be run ({exc.strerror})") from None
    if result.returncode != 0:
        output = (result.stdout + b"\n" + result.stderr).decode("utf-8", "replace")
        first = next((line.strip() for line in output.splitlines() if line.strip()), f"exit status {result.returncode}")
        raise UploadRefused(f"{name}: refused by the upload scan: {printable(first)[:300]}")


# ---------------------------------------------------------------- the check


def check_upload(source: Path | bytes, filename: str | None, settings) -> CheckedUpload:
    """Check a file before anything is kept (see the module's text); UploadRefused with the reason."""
    name = clean_filename(filename)
    ext = os.path.splitext(name)[1].lower()
    if ext not in EXTENSIONS:
        what = f"files ending {printable(ext)}" if ext else "files without an extension"
        raise UploadRefused(f"{name}: {what} are not accepted; send {ACCEPTED_WORDS}")
    path, sha256, size = _copy(source, name, settings.evidence_max_bytes)
    try:
        if size == 0:
            raise UploadRefused(f"{name}: the file is empty")
        kind = identify(path, name, settings)
        said = EXTENSIONS[ext]
        if isinstance(kind, str):
            raise UploadRefused(f"{name}: the name says {said.name} but the content is {kind}; send {ACCEPTED_WORDS}")
        if kind in (TEXT,) and said in (TEXT, CSV):
            kind = said
        if ext not in kind.extensions:
            raise UploadRefused(f"{name}: the name says {said.name} but the content is {kind.name}; "
                                f"name it {os.path.splitext(name)[0]}{kind.extensions[0]}")
        _scan(path, name, settings)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return CheckedUpload(path=path, filename=name, content_type=kind.content_type, sha256=sha256, size_bytes=size)
