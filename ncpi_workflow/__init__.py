"""ncpi-followup: durable follow-up of police child-protection inspection recommendations."""

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = PROJECT_ROOT / "config"
