"""The GOV.UK Frontend assets (npm `govuk-frontend`, installed by the Makefile into node_modules/,
never committed): its dist/govuk folder is served at /govuk (CSS, JavaScript) and its assets
folder at /assets (fonts, images), the path the stylesheet refers to."""

from __future__ import annotations

import json
from pathlib import Path

from ncpi_workflow import PROJECT_ROOT

GOVUK_FRONTEND_VERSION = "6.3.0"
"""The npm version pinned in package.json; govuk-frontend-jinja 4.1.0 targets it."""

DIST = PROJECT_ROOT / "node_modules" / "govuk-frontend" / "dist" / "govuk"


def dist_dir() -> Path | None:
    """The installed dist/govuk folder, or None when `make` has not installed it yet."""
    return DIST if (DIST / "govuk-frontend.min.css").is_file() and (DIST / "assets").is_dir() else None


def installed_version() -> str | None:
    package = PROJECT_ROOT / "node_modules" / "govuk-frontend" / "package.json"
    try:
        return json.loads(package.read_text())["version"]
    except (OSError, ValueError, KeyError):
        return None
