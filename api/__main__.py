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
    from api.server import uvicorn_config
    from api.settings import GatewaySettings

    settings = load(GatewaySettings)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    uvicorn.Server(uvicorn_config(create_app(settings), settings)).run()


@app.command("new-key")
def new_key() -> None:
    """Make an API key for a client: prints the key (give it to the client, once) and its sha256
    digest (add that to MATHAGENT_API_KEYS or MATHAGENT_API_KEYS_FILE; the gateway stores only digests)."""
    import hashlib
    import secrets

    key = "mk-" + secrets.token_urlsafe(32)
    typer.echo(f"key:    {key}")
    typer.echo(f"sha256: {hashlib.sha256(key.encode()).hexdigest()}")


if __name__ == "__main__":
    app()
