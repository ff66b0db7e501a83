"""The ``mathagent`` console script: one typer app; each command imports its module lazily
so that ``mathagent --help`` stays fast and a command pays only for what it uses."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(help="mathagent: a tool-integrated math agent that improves itself.", no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks that print side-by-side ratios from one run.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")


@app.command()
def up() -> None:
    """Start the whole stack (Redis, sandbox, gateway, trainer worker) on the embedded default; Ctrl-C stops it."""
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


@app.command()
def solve(
    problem: str = typer.Argument(..., help="the math problem"),
    gold: str | None = typer.Option(None, help="the gold answer: grade the result"),
    samples: int = typer.Option(1, help="sample k episodes and take a majority vote"),
    revisions: int = typer.Option(0, help="self-revise each answer n times (SRPO inference)"),
    mode: str = typer.Option("tir", help="tir (python tool), cot (chain of thought) or arc (multiple choice)"),
    max_turns: int | None = typer.Option(None, help="tool calls at most (default MATHAGENT_MAX_TURNS)"),
    temperature: float | None = typer.Option(None, help="default: 0 for one sample, 0.8 for several"),
    seed: int | None = typer.Option(None, help="sampling seed"),
    json_out: bool = typer.Option(False, "--json", help="print the result and trajectories as one JSON object"),
) -> None:
    """Solve one problem with the agent and show the trajectory (code, output, answer, grade)."""
    from agent.commands import run_solve

    raise typer.Exit(run_solve(problem, gold=gold, samples=samples, revisions=revisions, mode=mode,
                               max_turns=max_turns, temperature=temperature, seed=seed, as_json=json_out))


@app.command("eval")
def eval_(
    dataset: str = typer.Option("gsm8k", help="gsm8k, math, math500, arc or synthetic"),
    split: str = typer.Option("test", help="train / test (synthetic: easy, medium, hard or mixed)"),
    limit: int | None = typer.Option(None, help="first N problems"),
    samples: int = typer.Option(1, help="k > 1 adds maj@k (temperature 0.8)"),
    mode: str = typer.Option("tir", help="tir or cot (arc data always uses the arc prompt)"),
    data_dir: Path | None = typer.Option(None, help="folder with gsm8k/, math/, arc_challenge/ (else the HF hub)"),
    out: Path | None = typer.Option(None, help="trajectories JSONL (default eval-<dataset>-<split>-<time>.jsonl)"),
    concurrency: int = typer.Option(8, help="problems in flight (their generation is batched)"),
    seed: int = typer.Option(0, help="sampling / synthetic seed"),
) -> None:
    """Greedy and maj@k accuracy on a data set; writes every trajectory to a JSONL file."""
    from agent.commands import run_eval

    raise typer.Exit(run_eval(dataset, split=split, limit=limit, samples=samples, mode=mode, data_dir=data_dir,
                              out=out, concurrency=concurrency, seed=seed))


@bench_app.command("agent")
def bench_agent(
    episodes: int = typer.Option(8, help="episodes, run 8-wide concurrently and then one at a time"),
    max_new_tokens: int = typer.Option(96, help="per model turn (kept small: the sequential leg is slow on CPU)"),
    max_turns: int = typer.Option(2, help="tool calls per episode"),
    seed: int = typer.Option(0, help="synthetic problem seed"),
) -> None:
    """Agent throughput with the embedded model: concurrent vs sequential episodes, side by side."""
    from agent.bench_agent import run_bench

    raise typer.Exit(run_bench(episodes=episodes, max_new_tokens=max_new_tokens, max_turns=max_turns, seed=seed))


@bench_app.command("engine")
def bench_engine(
    model: str = typer.Option("smollm2", help="model spec (smollm2, a checkpoint directory...)"),
    new_tokens: int = typer.Option(48, help="new tokens per request"),
) -> None:
    """In-process engine tokens/s: 1 vs 8 concurrent requests, 1 vs 2 torch threads, side by side."""
    from agent.engines.bench import run

    run(model, new_tokens)


@app.command()
def pairs(
    out: Path = typer.Option(..., "--out", help="pairs JSONL to write"),
    scheme: str = typer.Option("irpo", help="irpo, mdpo, scpo or feedback"),
    from_file: list[Path] = typer.Option([], "--from-file", help="JSONL of trajectories (repeatable)"),
    from_redis: bool = typer.Option(False, "--from-redis", help="read the trajectory stream (MATHAGENT_REDIS_URL)"),
    redis_prefix: str | None = typer.Option(None, help="trajectory log key prefix (default MATHAGENT_REDIS_PREFIX)"),
    k: int = typer.Option(10, help="irpo/feedback: pairs per problem"),
    tau: float = typer.Option(0.5, help="scpo: minimum vote share of the top answer"),
    max_length: int | None = typer.Option(2048, help="drop pairs with a longer sequence"),
    seed: int = typer.Option(0, help="mdpo: seed of the random choice"),
    gold_data: Path | None = typer.Option(None, help="irpo: GSM8K/MATH JSONL whose gold solutions join the winners"),
    model: str = typer.Option("smollm2", help="tokenizer for rendering gold solutions"),
) -> None:
    """Build preference pairs from logged trajectories; prints counts per filter."""
    from trainer.commands import pairs_command

    pairs_command(files=from_file, from_redis=from_redis, stream_prefix=redis_prefix, scheme=scheme, out=out, k=k,
                  tau=tau, max_length=max_length, seed=seed, gold_data=gold_data, model=model)


@app.command()
def train(
    pairs: Path = typer.Option(..., help="pairs JSONL from `mathagent pairs`"),
    out: Path = typer.Option(..., help="output directory: checkpoint, curves.jsonl, state"),
    loss: str = typer.Option("dpo+nll", help="dpo, dpo+nll, ipo, kto, sft or srpo"),
    beta: float = typer.Option(0.1, help="DPO temperature"),
    alpha: float = typer.Option(1.0, help="dpo+nll: NLL coefficient; srpo: self-improvement weight"),
    lora: bool = typer.Option(False, "--lora", help="train a LoRA adapter (merged on save)"),
    model: str = typer.Option("smollm2", help="starting policy spec"),
    ref_model: str | None = typer.Option(None, help="fixed reference spec (default: the starting policy)"),
    lr: float | None = typer.Option(None, help="peak learning rate (default 7e-7)"),
    epochs: int | None = typer.Option(None, help="passes over the pairs (default 1)"),
    max_steps: int | None = typer.Option(None, help="optimizer steps at most"),
    batch_size: int | None = typer.Option(None, help="pairs per micro-batch per process (default 4)"),
    grad_accum: int | None = typer.Option(None, help="micro-batches per optimizer step (default 1)"),
    max_length: int | None = typer.Option(None, help="sequence length cap (default 2048)"),
    gradient_checkpointing: bool = typer.Option(False, "--gradient-checkpointing", help="save memory, cost compute"),
    save_steps: int | None = typer.Option(None, help="save resumable state every N steps"),
    resume: bool = typer.Option(False, "--resume", help="continue from <out>/state"),
    seed: int | None = typer.Option(None, help="data order seed"),
) -> None:
    """Train the policy on pairs (masked multi-turn DPO + NLL by default); writes a loadable checkpoint."""
    from trainer.commands import train_command

    train_command(dict(pairs=pairs, out=out, loss=loss, beta=beta, alpha=alpha, lora=lora, model=model,
                       ref_model=ref_model, lr=lr, epochs=epochs, max_steps=max_steps, per_device_batch_size=batch_size,
                       gradient_accumulation_steps=grad_accum, max_length=max_length,
                       gradient_checkpointing=gradient_checkpointing, save_steps=save_steps, resume=resume, seed=seed))


@app.command()
def iterate(
    dataset: str = typer.Option("synthetic", help="training set: synthetic, gsm8k or math"),
    iterations: int = typer.Option(1, help="iterations T (each: rollouts, pairs, train, gate, publish, deploy)"),
    data_dir: Path | None = typer.Option(None, help="folder with gsm8k/ and math/ (else MATHAGENT_DATA_DIR, else the hub)"),
    train_limit: int | None = typer.Option(None, help="training prompts (default MATHAGENT_TRAIN_LIMIT)"),
    eval_limit: int | None = typer.Option(None, help="held-out problems of the gate (default MATHAGENT_EVAL_LIMIT)"),
    samples: int | None = typer.Option(None, help="rollouts per prompt N (default MATHAGENT_SAMPLES)"),
    run_dir: Path | None = typer.Option(None, help="run directory; the same one resumes an interrupted run"),
    tolerance: float | None = typer.Option(None, help="promote when candidate >= current - tolerance (default 0)"),
    deploy_url: str | None = typer.Option(None, help="gateway to deploy through (default MATHAGENT_GATEWAY_URL)"),
    temperatures: str | None = typer.Option(None, help="rollout temperature per iteration, e.g. 0.8,0.8,1.3"),
    max_steps: int | None = typer.Option(None, help="optimizer steps at most per iteration"),
    seed: int = typer.Option(0, help="data and sampling seed"),
    logged: bool = typer.Option(True, "--logged/--no-logged", help="add prompts from logged, labelled trajectories"),
) -> None:
    """Self-improvement: T iterations of rollouts -> pairs -> DPO+NLL training -> eval gate -> publish -> deploy."""
    from trainer.iterate_cli import run_iterate

    raise typer.Exit(run_iterate(dataset=dataset, iterations=iterations, data_dir=data_dir, train_limit=train_limit,
                                 eval_limit=eval_limit, samples=samples, run_dir=run_dir, tolerance=tolerance,
                                 deploy_url=deploy_url, temperatures=temperatures, max_steps=max_steps, seed=seed,
                                 use_logged=logged))


@app.command()
def experiment(
    family: str = typer.Argument(..., help="irpo or mdpo: which paper's comparison table"),
    dataset: str = typer.Option("tasks", help="tasks (graded synthetic family), synthetic, gsm8k or math"),
    model: str = typer.Option("smollm2", help="model spec: smollm2, a checkpoint directory or a hub id"),
    levels: str | None = typer.Option(None, help="tasks: difficulty levels, e.g. 1-3 or 1,2,5 [1-5; cpu mdpo 1-3]"),
    data_dir: Path | None = typer.Option(None, help="folder with gsm8k/ and math/ JSONL"),
    scale: str = typer.Option("auto", help="defaults for the sizes and budget: cpu, gpu, or auto (gpu when CUDA is "
                              "available); an option given explicitly wins"),
    train_limit: int | None = typer.Option(None, help="training problems [cpu 32, gpu 256]"),
    eval_limit: int | None = typer.Option(None, help="held-out problems every row is measured on [cpu 40, gpu 250]"),
    samples: int | None = typer.Option(None, help="rollouts per training problem (N) [cpu 4, cpu mdpo 8, gpu 8]"),
    maj_k: int | None = typer.Option(None, help="samples of the zero-shot maj@k row [cpu 4, gpu 8]"),
    temperature: float = typer.Option(0.8, help="rollout and maj@k temperature"),
    pairs_k: int = typer.Option(2, help="IRPO pairs per problem (K)"),
    max_turns: int = typer.Option(2, help="tool calls per episode in every row"),
    max_new_tokens: int = typer.Option(128, help="tokens per model turn (a gold task turn takes ~60)"),
    warmup: bool = typer.Option(True, "--warmup/--no-warmup", help="preference rows start from the SFT-on-gold model"),
    warmup_lr: float = typer.Option(1e-5, help="learning rate of the SFT rows (warm-up, STaR, RAFT)"),
    warmup_epochs: int | None = typer.Option(None, help="epochs of the SFT-on-gold warm-up [cpu irpo 8, else 4]"),
    lr: float | None = typer.Option(None, help="learning rate of the preference rows [cpu 5e-6, gpu 1e-6]"),
    epochs: int = typer.Option(1, help="epochs over the pairs of the preference and STaR / RAFT rows (M-DPO: 1-2)"),
    max_steps: int | None = typer.Option(None, help="optimizer steps at most per training"),
    batch_size: int | None = typer.Option(None, help="pairs per optimizer step [4; cpu mdpo 2]"),
    max_length: int = typer.Option(1024, help="tokens per training sequence at most"),
    budget_minutes: float | None = typer.Option(None, help="wall-time bound: rows that do not fit are skipped "
                                                "[cpu 110, gpu 110]; inf = no bound"),
    rows: str | None = typer.Option(None, help="run only these rows (comma-separated names, e.g. zero_shot,sft_gold)"),
    run_dir: Path | None = typer.Option(None, help="run directory; the same one resumes (finished rows are kept)"),
    seed: int = typer.Option(0, help="data and sampling seed"),
) -> None:
    """The IRPO / M-DPO comparison table on one data set and model (accuracy with 95% CI, log-prob plots)."""
    from trainer.experiment_cli import run_experiment_cli

    raise typer.Exit(run_experiment_cli(
        family=family, run_dir=run_dir, budget_minutes=budget_minutes, levels=levels, scale=scale, rows=rows,
        dataset=dataset, model=model,
        data_dir=data_dir, train_limit=train_limit, eval_limit=eval_limit, samples=samples, maj_k=maj_k,
        temperature=temperature, pairs_k=pairs_k, max_turns=max_turns, max_new_tokens=max_new_tokens, warmup=warmup,
        warmup_lr=warmup_lr, warmup_epochs=warmup_epochs, lr=lr, epochs=epochs, max_steps=max_steps,
        batch_size=batch_size, max_length=max_length, seed=seed,
    ))


@bench_app.command("trainer")
def bench_trainer(
    pairs: int = typer.Option(16, help="single-turn pairs in the benchmark"),
    batch_size: int = typer.Option(4, help="pairs per step for both contestants"),
    model: str = typer.Option("smollm2", help="model spec both contestants train"),
    gradient_checkpointing: bool = typer.Option(False, "--gradient-checkpointing", help="on for both contestants"),
    repeats: int = typer.Option(1, min=1, help="run both this many times, interleaved; report the fastest of each"),
) -> None:
    """Our training step vs TRL's DPOTrainer on the same pairs: tokens/s, peak memory, log-probs, losses."""
    from trainer.bench import main as bench_main

    bench_main(n_pairs=pairs, batch_size=batch_size, model=model, gradient_checkpointing=gradient_checkpointing,
               repeats=repeats)


@bench_app.command("sandbox")
def bench_sandbox(
    n: int = typer.Option(200, help="executions per latency row"),
    callers: int = typer.Option(4, help="concurrent callers for the throughput row"),
) -> None:
    """Sandbox p50/p99 (stateless, session) beside subprocess `python3 -c`, throughput and the ratios."""
    import asyncio

    from sandbox.bench import run_bench

    asyncio.run(run_bench(n=n, callers=callers))


@bench_app.command("swap")
def bench_swap(
    clients: int = typer.Option(8, help="concurrent clients (streamed and not, chat and solve)"),
    duration: float = typer.Option(30.0, help="seconds of load"),
    deploy_at: float = typer.Option(15.0, help="seconds into the run when the other version is deployed"),
    seed: int = typer.Option(0, help="problem text seed"),
) -> None:
    """Hot swap under load: prepare/commit/drain times, first token from the new version, and
    requests/s in the swap window vs a baseline window of the same run (two tiny scripted versions)."""
    from api.bench_swap import run

    raise typer.Exit(run(clients=clients, duration_s=duration, deploy_at_s=deploy_at, seed=seed))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
