from __future__ import annotations

from pathlib import Path

from genfleet.flags_doc import flags_table


def test_readme_flags_table_is_generated_from_the_configs() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    table = readme.split("<!-- flags:begin -->\n", 1)[1].split("<!-- flags:end -->", 1)[0]
    assert table == flags_table(), "README flags table is stale: python -m genfleet.flags_doc"
