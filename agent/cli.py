"""The ``mathagent`` console script: one typer app; each command imports its module lazily
so that ``mathagent --help`` stays fast and a command pays only for what it uses."""

from __future__ import annotations

import typer

app = typer.Typer(help="mathagent: a tool-integrated math agent that improves itself.", no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks that print side-by-side ratios from one run.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")


@app.command()
def up() -> None:
    """Start the whole stack (Redis, sandbox, gateway) on the embedded default; Ctrl-C stops it."""
    from agent.configuration import load
    from agent.stack import Stack, StackSettings

    raise typer.Exit(Stack(load(StackSettings)).run())


@app.command()
def provision() -> None:
    """Resolve the configured model (MATHAGENT_MODEL), converting/downloading it once into the cache."""
    from agent import modelstore
    from agent.configuration import load
    from agent.stack import StackSettings

    settings = load(StackSettings)
    try:
        resolved = modelstore.resolve(settings.model, settings.state_dir)
    except modelstore.ModelSpecError as exc:
        typer.echo(f"mathagent: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"model {resolved.spec} version {resolved.version} at {resolved.path}")


@app.command()
def generate(
    prompt: str = typer.Argument(..., help="what to ask the model"),
    max_new_tokens: int = typer.Option(128, help="tokens to generate at most"),
    temperature: float = typer.Option(0.0, help="0 = greedy"),
) -> None:
    """Ask the plain model (no tools, no sandbox) and stream its answer."""
    from agent.configuration import load
    from agent.generate import generate as run
    from agent.modelstore import ModelSpecError
    from agent.stack import StackSettings

    settings = load(StackSettings)
    try:
        run(prompt, model_spec=settings.model, state_dir=settings.state_dir,
            max_new_tokens=max_new_tokens, temperature=temperature)
    except ModelSpecError as exc:
        typer.echo(f"mathagent: {exc}", err=True)
        raise typer.Exit(2) from None


@app.command("config-example")
def config_example() -> None:
    """Print every MATHAGENT_* setting with its default (the content of .env.example)."""
    from agent.configuration import example_env

    typer.echo(example_env(), nl=False)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
