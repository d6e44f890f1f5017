"""GET /docs: Swagger UI over /api-doc/openapi.json, its assets served from the installed package.

Nothing is loaded from a CDN, so the page works where the gateway has no way out (air-gapped
clusters), as TGI's does with the assets built into its binary. The assets come from the
`openapi-ui-bundles` package (Swagger UI 5, which renders OpenAPI 3.1).
"""

from __future__ import annotations

from openapi_ui_bundles.swagger_ui import static_path
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

__all__ = ["docs_routes"]

_ASSETS = "/docs/static"

_PAGE = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>genfleet API</title>
<link rel="icon" type="image/png" href="{_ASSETS}/favicon-32x32.png">
<link rel="stylesheet" href="{_ASSETS}/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="{_ASSETS}/swagger-ui-bundle.js"></script>
<script>window.ui = SwaggerUIBundle({{url: "/api-doc/openapi.json", dom_id: "#swagger-ui"}});</script>
</body></html>
"""


async def _swagger_ui(request: Request) -> Response:
    return HTMLResponse(_PAGE)


def docs_routes() -> list[BaseRoute]:
    return [
        Route("/docs", _swagger_ui, methods=["GET"]),
        Mount(_ASSETS, app=StaticFiles(directory=static_path), name="swagger-ui-assets"),
    ]
