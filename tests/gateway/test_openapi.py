"""GET /api-doc/openapi.json is a valid OpenAPI document built from the schema classes; /docs serves it."""

from __future__ import annotations

import re

import httpx
import pytest

from tests.gateway.harness import GatewayServer

pytestmark = pytest.mark.timeout(60)


def test_openapi_spec_is_valid_and_complete(gateway: GatewayServer) -> None:
    spec = httpx.get(f"{gateway.url}/api-doc/openapi.json", timeout=10).json()
    validator = pytest.importorskip("openapi_spec_validator")
    validator.validate(spec)
    routes = {"/", "/generate", "/generate_stream", "/tokenize", "/chat_tokenize", "/v1/chat/completions",
              "/v1/completions", "/v1/models", "/health", "/ping", "/info", "/metrics", "/v1/load_lora_adapter",
              "/v1/unload_lora_adapter", "/generate_stream/{request_id}", "/cancel/{request_id}", "/watermark/detect"}
    assert routes <= set(spec["paths"])
    params = spec["components"]["schemas"]["GenerateParameters"]["properties"]
    for name in ("best_of", "temperature", "repetition_penalty", "frequency_penalty", "top_k", "top_p",
                 "typical_p", "do_sample", "max_new_tokens", "return_full_text", "stop", "truncate", "watermark",
                 "details", "decoder_input_details", "seed", "top_n_tokens", "grammar", "adapter_id"):
        assert name in params, name
    assert spec["components"]["schemas"]["GenerateInput"]["required"] == ["inputs"]


def test_docs_page_points_at_the_spec(gateway: GatewayServer) -> None:
    r = httpx.get(f"{gateway.url}/docs", timeout=10)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "/api-doc/openapi.json" in r.text and "swagger-ui" in r.text


def test_docs_page_loads_nothing_from_outside(gateway: GatewayServer) -> None:
    # Air-gapped clusters: every asset the page names comes from the gateway itself.
    page = httpx.get(f"{gateway.url}/docs", timeout=10).text
    assets = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert assets and all(a.startswith("/") and not a.startswith("//") for a in assets), assets
    assert not re.search(r"https?://", page)
    kinds: dict[str, httpx.Response] = {}
    for asset in assets:
        r = httpx.get(f"{gateway.url}{asset}", timeout=10)
        assert r.status_code == 200 and r.content, asset
        kinds[asset.rsplit(".", 1)[-1]] = r
    assert "SwaggerUIBundle" in kinds["js"].text and "javascript" in kinds["js"].headers["content-type"]
    assert kinds["css"].headers["content-type"].startswith("text/css")
    assert httpx.get(f"{gateway.url}/docs/static/no-such-file.js", timeout=10).status_code == 404


def test_the_spec_documents_resuming(gateway: GatewayServer) -> None:
    spec = httpx.get(f"{gateway.url}/api-doc/openapi.json", timeout=10).json()
    by_id = spec["paths"]["/generate_stream/{request_id}"]["get"]
    assert {(p["name"], p["in"]) for p in by_id["parameters"]} == {
        ("request_id", "path"), ("Last-Event-ID", "header"), ("last_event_id", "query")}
    assert {"200", "204", "400", "403", "404", "410"} <= set(by_id["responses"])
    assert "text/event-stream" in by_id["responses"]["200"]["content"]
    for path in ("/", "/generate_stream", "/v1/chat/completions", "/v1/completions"):
        names = {p["name"] for p in spec["paths"][path]["post"]["parameters"]}
        assert names == {"x-request-id", "Idempotency-Key", "Last-Event-ID"}, path
