from __future__ import annotations

from pathlib import Path

from genfleet.flags_doc import flags_table


def test_readme_flags_table_is_generated_from_the_configs() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    table = readme.split("<!-- flags:begin -->\n", 1)[1].split("<!-- flags:end -->", 1)[0]
    assert table == flags_table(), "README flags table is stale: python -m genfleet.flags_doc"


def readme_curl_examples() -> list[tuple[str, dict[str, object]]]:
    """(route, JSON body) of each POST in the README's "Use it" section, in order."""
    import json
    import re

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("## Use it\n", 1)[1].split("\n## ", 1)[0]
    found = re.findall(r"curl (?:-N )?127\.0\.0\.1:8080(/\S+) .*?\\\n\s+-d '([^']+)'", section)
    return [(route, json.loads(body)) for route, body in found]


def test_readme_first_example_is_the_chat_route_and_no_raw_question_goes_to_generate() -> None:
    examples = readme_curl_examples()
    assert examples and examples[0][0] == "/v1/chat/completions"
    for route, body in examples:
        if route.startswith("/generate"):
            # A raw question makes the instruct model end its turn at once: an empty answer.
            assert not str(body["inputs"]).rstrip().endswith("?"), body
