"""``python -m trainer worker``: the arq worker; ``python -m trainer train-run CONFIG``: one
training run (the child that ``accelerate launch`` starts, see :mod:`trainer.launch`)."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False)


@app.callback()
def _root() -> None:
    """The mathagent trainer."""


@app.command()
def worker() -> None:
    """Run the arq worker that runs retrain jobs (settings from MATHAGENT_* environment variables)."""
    from trainer.worker import run_worker

    raise typer.Exit(run_worker())


@app.command()
def health() -> None:
    """Exit 0 when a worker serves the configured queue (arq's health-check key exists), else 1."""
    import redis

    from agent.configuration import load
    from trainer.settings import TrainerSettings

    settings = load(TrainerSettings)
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=3, socket_connect_timeout=3)
    try:
        alive = bool(client.exists(settings.health_check_key))
    except redis.RedisError as exc:
        typer.echo(f"trainer: redis at {settings.redis_url}: {exc}", err=True)
        alive = False
    finally:
        client.close()
    raise typer.Exit(0 if alive else 1)


@app.command("train-run")
def train_run(config: Path = typer.Argument(..., help="the TrainConfig JSON that trainer.launch wrote")) -> None:
    """One training run (what `accelerate launch` starts in each process)."""
    from trainer.launch import train_run_main

    raise typer.Exit(train_run_main(str(config)))


if __name__ == "__main__":
    app()
