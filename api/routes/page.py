"""The chat page at ``/`` and its static assets (vendored: the page works offline)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

STATIC_DIR = Path(__file__).resolve().parents[1] / "static"

router = APIRouter(tags=["page"])

# The page runs only our own scripts and styles (no inline code, no inline style attributes, no
# CDN; KaTeX's box positions are applied through the CSSOM, see app.js) and submits no form: a
# strict policy makes a sanitiser bypass in rendered model output harmless.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "font-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)


@router.get("/", include_in_schema=False)
async def index() -> FileResponse:
    return FileResponse(
        STATIC_DIR / "index.html",
        headers={"content-security-policy": CSP, "x-content-type-options": "nosniff", "cache-control": "no-cache"},
    )
