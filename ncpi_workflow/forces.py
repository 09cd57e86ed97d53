"""The 43 territorial police forces of England and Wales: reference data from config/forces.yaml."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ncpi_workflow.errors import UserError
from ncpi_workflow.yamlsafe import line_for, load_located


class Contact(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(min_length=1)
    email: str = Field(pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


class Contacts(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    liaison_officer: Contact
    chief_officer: Contact
    pcc: Contact


class ForceRef(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    code: str = Field(pattern=r"^[A-Z]{3}$")
    name: str = Field(min_length=1)
    region: str = Field(min_length=1)
    contacts: Contacts


class ForcesFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    forces: list[ForceRef]


@lru_cache(maxsize=4)
def load_forces(path: Path) -> dict[str, ForceRef]:
    """The forces by code; a UserError names the file, line and field at fault."""
    data, lines = load_located(Path(path), max_bytes=1024 * 1024)
    try:
        parsed = ForcesFile.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(err["loc"])
        raise UserError(f"{path}:{line_for(lines, loc)}: {'.'.join(map(str, loc))}: {err['msg']}") from None
    by_code: dict[str, ForceRef] = {}
    for force in parsed.forces:
        if force.code in by_code:
            raise UserError(f"{path}: duplicate force code {force.code}")
        by_code[force.code] = force
    return by_code
