"""docs/configuration.md is the code's own table: it must never drift."""

from pathlib import Path

from store_scp.config import describe

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_configuration_doc_matches_the_settings() -> None:
    text = DOC.read_text()
    assert describe().strip() in text, "regenerate docs/configuration.md from config.describe()"
