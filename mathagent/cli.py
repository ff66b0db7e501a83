"""The ``mathagent`` console script: typer wiring only.

Each command's body lives in :mod:`mathagent.commands` (or a benchmark in :mod:`mathagent.bench`)
and is imported when the command runs. The options of ``train``, ``iterate`` and ``experiment``
come from the fields of the config models they fill (:mod:`mathagent.options`), so their
defaults and help are written once, in those models.
"""

from __future__ import annotations

import os
import sys
import warnings
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import typer

from mathagent.options import argument, command_signature, field_options, option
from trainer.config import TrainConfig
from trainer.experiment import ExperimentConfig, preset_help
from trainer.recipe import RetrainRequest

# transformers 5.x renames the forward keyword `past_key_values` to `cache` and warns on every run;
# the engine keeps the old name, which every 5.x release accepts (until 5.40), so the warning is noise.
warnings.filterwarnings("ignore", message=r"`past_key_values` is deprecated", category=FutureWarning)
if not sys.stderr.isatty():  # a log or CI: no progress bars of the hub libraries ("Loading weights" at every start)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

app = typer.Typer(help="mathagent: a tool-integrated math agent that improves itself.", no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks that print side-by-side ratios from one run.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")


class EngineChoice(StrEnum):
    """An engine a benchmark measures."""

    in_process = "in-process"
    vllm = "vllm"


@app.command()
def up(
    engine: Literal["transformers", "vllm"] | None = typer.Option(
        None, help="inference engine (default MATHAGENT_ENGINE): the in-process engine, or a vLLM server that up "
        "starts from .venv-vllm (scripts/setup.sh vllm) unless one answers at MATHAGENT_VLLM_URL"),
) -> None:
    """Start the whole stack (Redis, sandbox, gateway, trainer worker) on the embedded default; Ctrl-C stops it."""
    from agent.configuration import load
    from mathagent.settings import StackSettings
    from mathagent.stack import Stack

    overrides: dict[str, Any] = {} if engine is None else {"engine": engine}
    raise typer.Exit(Stack(load(StackSettings, **overrides)).run())


@app.command()
def provision(
    export: Path | None = typer.Option(None, help="also make this path a symlink to the checkpoint (what a "
                                       "vLLM server is then started on: the same files as the gateway's tokenizer)"),
) -> None:
    """Resolve the configured model (MATHAGENT_MODEL), converting/downloading it once into the cache."""
    from mathagent.commands.generate import run_provision

    raise typer.Exit(run_provision(export))


@app.command()
def generate(
    prompt: str = typer.Argument(..., help="what to ask the model"),
    max_new_tokens: int = typer.Option(128, help="tokens to generate at most"),
    temperature: float = typer.Option(0.0, help="0 = greedy"),
) -> None:
    """Ask the plain model (no tools, no sandbox) and stream its answer."""
    from mathagent.commands.generate import run_generate

    raise typer.Exit(run_generate(prompt, max_new_tokens=max_new_tokens, temperature=temperature))


@app.command("config-example")
def config_example() -> None:
    """Print every MATHAGENT_* setting with its default (the content of .env.example)."""
    from mathagent.settings import example_env

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
    from mathagent.commands.solve import run_solve

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
    from mathagent.commands.evaluate import run_eval

    raise typer.Exit(run_eval(dataset, split=split, limit=limit, samples=samples, mode=mode, data_dir=data_dir,
                              out=out, concurrency=concurrency, seed=seed))


@app.command()
def pairs(
    out: Path = typer.Option(..., "--out", help="pairs JSONL to write"),
    scheme: str = typer.Option("irpo", help="irpo, mdpo, scpo or feedback"),
    from_file: list[Path] = typer.Option([], "--from-file", help="JSONL of trajectories (repeatable)"),
    from_redis: bool = typer.Option(False, "--from-redis", help="read the trajectory stream (MATHAGENT_REDIS_URL)"),
    redis_prefix: str | None = typer.Option(None, help="trajectory log key prefix (default MATHAGENT_REDIS_PREFIX)"),
    k: int = typer.Option(10, help="irpo/feedback: pairs per problem"),
    tau: float = typer.Option(0.5, help="scpo: minimum vote share of the top answer"),
    max_length: int | None = typer.Option(TrainConfig.model_fields["max_length"].default,
                                          help="drop pairs with a longer sequence"),
    seed: int = typer.Option(0, help="mdpo: seed of the random choice"),
    gold_data: Path | None = typer.Option(None, help="irpo: GSM8K/MATH JSONL whose gold solutions join the winners"),
    model: str = typer.Option(TrainConfig.model_fields["model"].default, help="tokenizer for rendering gold solutions"),
) -> None:
    """Build preference pairs from logged trajectories; prints counts per filter."""
    from mathagent.commands.pairs import run_pairs

    raise typer.Exit(run_pairs(files=from_file, from_redis=from_redis, stream_prefix=redis_prefix, scheme=scheme,
                               out=out, k=k, tau=tau, max_length=max_length, seed=seed, gold_data=gold_data,
                               model=model))


@app.command()
@command_signature(field_options(
    TrainConfig, exclude={"state_dir", "progress"},
    flags={"per_device_batch_size": "--batch-size", "gradient_accumulation_steps": "--grad-accum"},
))
def train(**options: Any) -> None:
    """Train the policy on pairs (masked multi-turn DPO + NLL by default); writes a loadable checkpoint."""
    from mathagent.commands.train import run_train

    raise typer.Exit(run_train(options))


@app.command()
@command_signature(
    field_options(RetrainRequest, flags={"use_logged": "--logged"}),
    [option("run_dir", Path | None, None, "run directory; the same one resumes an interrupted run"),
     option("deploy_url", str | None, None, "gateway to deploy through (default MATHAGENT_GATEWAY_URL)")],
)
def iterate(**options: Any) -> None:
    """Self-improvement: T iterations of rollouts -> pairs -> DPO+NLL training -> eval gate -> publish -> deploy."""
    from mathagent.commands.iterate import run_iterate

    raise typer.Exit(run_iterate(options))


@app.command()
@command_signature(
    [argument("family", Literal["irpo", "mdpo"], "which paper's comparison table: irpo or mdpo")],
    field_options(ExperimentConfig, exclude={"family"}, unset=True, help_suffix=preset_help()),
    [option("scale", Literal["auto", "cpu", "gpu"], "auto", "defaults for the sizes and budget: cpu, gpu, or auto "
            "(gpu when CUDA is available); an option given explicitly wins"),
     option("budget_minutes", float | None, None, "wall-time bound of the whole invocation: rows that do not fit "
            "are skipped (default 110 per seed; several seeds share it equally); inf = no bound"),
     option("seeds", int, 1, "run the experiment for this many seeds (--seed, --seed + 1, ...), each in "
            "RUN_DIR/seed-<seed>, and report each and the orderings pooled over them"),
     option("rows", str | None, None, "run only these rows (comma-separated names, e.g. zero_shot,sft_gold)"),
     option("run_dir", Path | None, None, "run directory; the same one resumes (finished rows are kept)")],
)
def experiment(**options: Any) -> None:
    """The IRPO / M-DPO comparison table on one data set and model (accuracy with 95% CI, log-prob plots)."""
    from mathagent.commands.experiment import run_experiment_command

    raise typer.Exit(run_experiment_command(options))


@bench_app.command("agent")
def bench_agent(
    episodes: int = typer.Option(8, min=1, help="episodes per leg at least (a leg at 1 concurrent runs them one by one)"),
    max_new_tokens: int = typer.Option(96, min=1, help="per model turn (kept small: the 1-at-a-time legs are slow on CPU)"),
    max_turns: int = typer.Option(2, min=1, help="tool calls per episode"),
    seed: int = typer.Option(0, help="synthetic problem seed"),
    engine: list[EngineChoice] = typer.Option(list(EngineChoice), help="engines to measure (repeat the option)"),
    concurrency: list[int] = typer.Option([1, 8, 32], min=1, help="concurrent episodes per leg (repeat the option)"),
    vllm_url: str | None = typer.Option(None, help="measure this running vLLM server (serving MATHAGENT_MODEL) "
                                        "instead of starting one from .venv-vllm"),
    vllm_model: str | None = typer.Option(None, help="its --served-model-name (with --vllm-url)"),
) -> None:
    """Episodes/min of the in-process engine and of real vLLM at 1/8/32 concurrent episodes, side by side."""
    from mathagent.bench.agent import run_bench

    raise typer.Exit(run_bench(episodes=episodes, max_new_tokens=max_new_tokens, max_turns=max_turns, seed=seed,
                               engines=tuple(e.value for e in engine), levels=tuple(concurrency), vllm_url=vllm_url,
                               vllm_model=vllm_model))


@bench_app.command("rollouts")
def bench_rollouts(
    prompts: int = typer.Option(8, min=1, help="training prompts (the synthetic recipe's split)"),
    samples: int = typer.Option(8, min=1, help="rollouts per prompt (the trainer's default, MATHAGENT_SAMPLES)"),
    concurrency: int = typer.Option(8, min=1, help="prompts in flight, each running its samples together (the "
                                    "trainer's default, MATHAGENT_ROLLOUT_CONCURRENCY)"),
    max_new_tokens: int = typer.Option(128, min=1, help="per model turn"),
    max_turns: int = typer.Option(2, min=1, help="tool calls per episode"),
    temperature: float = typer.Option(0.8, min=0.0, help="rollout temperature (IRPO's first iterations)"),
    seed: int = typer.Option(0, help="data and sampling seed"),
    users: int = typer.Option(6, min=0, help="user solves timed on idle vLLM, then as many as fit during its "
                              "rollouts (0: none)"),
    engine: list[EngineChoice] = typer.Option(list(EngineChoice), help="engines to measure (repeat the option)"),
    vllm_url: str | None = typer.Option(None, help="measure this running vLLM server (serving MATHAGENT_MODEL) "
                                        "instead of starting one from .venv-vllm"),
    vllm_model: str | None = typer.Option(None, help="its --served-model-name (with --vllm-url)"),
) -> None:
    """Trajectories/min of one iteration's rollout phase on the in-process engine and on real vLLM, side by
    side, and user solve latency on vLLM idle vs during its rollouts."""
    from mathagent.bench.rollouts import run_bench

    raise typer.Exit(run_bench(prompts=prompts, samples=samples, concurrency=concurrency,
                               max_new_tokens=max_new_tokens, max_turns=max_turns, temperature=temperature, seed=seed,
                               users=users, engines=tuple(e.value for e in engine), vllm_url=vllm_url,
                               vllm_model=vllm_model))


@bench_app.command("engine")
def bench_engine(
    model: str = typer.Option(TrainConfig.model_fields["model"].default, help="model spec (smollm2, a checkpoint "
                              "directory...)"),
    new_tokens: int = typer.Option(64, min=1, help="new tokens per request"),
    engine: list[EngineChoice] = typer.Option(list(EngineChoice), help="engines to measure (repeat the option)"),
    concurrency: list[int] = typer.Option([1, 8, 32], min=1, help="concurrent requests per row (repeat the option)"),
    threads: int | None = typer.Option(None, min=1, help="torch threads of the in-process engine (default: settings)"),
    vllm_url: str | None = typer.Option(None, help="measure this running vLLM server (same checkpoint) instead of "
                                        "starting one from .venv-vllm"),
    vllm_model: str | None = typer.Option(None, help="its --served-model-name (with --vllm-url)"),
) -> None:
    """Tokens/s of the in-process engine and of real vLLM on the same checkpoint, 1/8/32 concurrent, side by side."""
    from agent.engines.base import EngineError
    from agent.modelstore import ModelSpecError
    from mathagent.bench.engine import run
    from mathagent.errors import fail
    from mathagent.vllm_server import VLLMServerError

    try:
        run(model, new_tokens=new_tokens, engines=tuple(e.value for e in engine), levels=tuple(concurrency),
            threads=threads, vllm_url=vllm_url, vllm_model=vllm_model)
    except (ModelSpecError, VLLMServerError, EngineError) as exc:
        raise typer.Exit(fail(str(exc))) from None


@bench_app.command("trainer")
def bench_trainer(
    pairs: int = typer.Option(16, help="single-turn pairs in the benchmark"),
    batch_size: int = typer.Option(4, help="pairs per step for both contestants"),
    model: str = typer.Option(TrainConfig.model_fields["model"].default, help="model spec both contestants train"),
    gradient_checkpointing: bool = typer.Option(False, "--gradient-checkpointing", help="on for both contestants"),
    repeats: int = typer.Option(1, min=1, help="run both this many times, interleaved; report the fastest of each"),
) -> None:
    """Our training step vs TRL's DPOTrainer on the same pairs: tokens/s, peak memory, log-probs, losses."""
    from mathagent.bench.trainer import main as bench_main

    bench_main(n_pairs=pairs, batch_size=batch_size, model=model, gradient_checkpointing=gradient_checkpointing,
               repeats=repeats)


@bench_app.command("sandbox")
def bench_sandbox(
    n: int = typer.Option(200, help="executions per latency row"),
    callers: int = typer.Option(4, help="concurrent callers for the throughput row"),
) -> None:
    """Sandbox p50/p99 (stateless, session) beside subprocess `python3 -c`, throughput and the ratios."""
    import asyncio

    from mathagent.bench.sandbox import run_bench

    asyncio.run(run_bench(n=n, callers=callers))


@bench_app.command("swap")
def bench_swap(
    clients: int = typer.Option(8, min=1, help="concurrent clients (streamed and not, chat and solve)"),
    duration: float | None = typer.Option(None, help="seconds of load (default 30; 240 with --engine vllm, where a swap "
                                          "under load takes a minute or more)"),
    deploy_at: float = typer.Option(15.0, help="seconds into the run when the other version is deployed"),
    seed: int = typer.Option(0, help="problem text seed"),
    engine: Literal["transformers", "vllm"] = typer.Option(
        "transformers", help="transformers: two tiny scripted versions in process; vllm: SmolLM2 on real vLLM, a "
        "LoRA version blue/green, a rollback, then full weights reloaded in place"),
    vllm_url: str | None = typer.Option(None, help="--engine vllm: this running server (serving SmolLM2 with "
                                        "--enable-lora and the dev routes) instead of one started from .venv-vllm"),
    vllm_model: str | None = typer.Option(None, help="its --served-model-name (with --vllm-url)"),
) -> None:
    """Hot swap under load: prepare/commit/drain times, first token from the new version, and
    requests/s in the swap window vs a baseline window of the same run."""
    from mathagent.bench.swap import run

    duration = duration or (240.0 if engine == "vllm" else 30.0)
    raise typer.Exit(run(clients=clients, duration_s=duration, deploy_at_s=deploy_at, seed=seed, engine=engine,
                         vllm_url=vllm_url, vllm_model=vllm_model))


def main() -> None:
    app()
