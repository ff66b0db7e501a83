"""``python -m api serve``: run the gateway with uvicorn on the configured address."""

from __future__ import annotations

import logging

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False)


@app.callback()
def _root() -> None:
    """The mathagent API gateway."""


@app.command()
def serve() -> None:
    """Serve the gateway (settings from MATHAGENT_* environment variables)."""
    import uvicorn

    from agent.configuration import load
    from api.app import create_app
    from api.settings import GatewaySettings

    settings = load(GatewaySettings)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="info")


if __name__ == "__main__":
    app()
