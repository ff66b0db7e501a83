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


@app.command("train-run")
def train_run(config: Path = typer.Argument(..., help="the TrainConfig JSON that trainer.launch wrote")) -> None:
    """One training run (what `accelerate launch` starts in each process)."""
    from trainer.launch import train_run_main

    raise typer.Exit(train_run_main(str(config)))


if __name__ == "__main__":
    app()
