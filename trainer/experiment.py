"""``mathagent experiment irpo|mdpo``: the comparison of the IRPO and M-DPO papers, run on one
data set and model, every row through the real agent loop, sandbox, trainer and registry.

Rows (docs/algorithms.md, :data:`ROWS`): zero-shot greedy and maj@k, with the python tool and
with IRPO's chain-of-thought prompt (what the base model does in each mode); SFT on gold tool
trajectories (the warm-up the other rows start from, reported as its own row) and its maj@k;
STaR / RAFT (SFT on the warm model's own correct samples); per family the preference rows:
IRPO's DPO and DPO+NLL iteration 1, DPO+NLL iterations 2 and 3 (each starts from, and uses as
reference, the previous iteration's model, sampling fresh rollouts from it) and it.3's maj@k,
M-DPO and M-KTO iteration 1, M-DPO iteration 2 with the reference fixed at the warm-up model vs
set to iteration 1's model, and ScPO (pairs from the majority vote of the samples, gold labels
dropped, weighted DPO+NLL). The irpo family ends with SRPO's two rows: the DPO+NLL it.1 model
answering greedily and then revising its answer ``revisions`` times with the revision prompt (an
untrained reviser), and SRPO it.1 (the SRPO loss on revision pairs from the warm-up's rollouts,
:func:`trainer.pairs.srpo_pairs`) measured the same way, with 0 and k revisions.

Each row calls what the iteration driver (:mod:`trainer.iterate`) calls: the data split
(:func:`trainer.collect.dataset_split`, or the graded task family :mod:`agent.tasks`),
rollouts (:func:`trainer.rollouts.run_rollouts`, gold solutions rendered by
:func:`trainer.rollouts.gold_trajectory_for` in the real sandbox), pair builders
(:mod:`trainer.pairs`), training in an ``accelerate launch`` subprocess
(:func:`trainer.launch.run_training`), evaluation (:func:`trainer.gate.evaluate_engine`, and
:func:`agent.evaluate.evaluate` for maj@k) and publishing (:class:`trainer.registry.Registry`, a
registry inside the run directory so experiments never touch the served model's).

Run directory::

    config.json              the experiment's config; a rerun with another config is refused
    rows/<row>.json          one RowResult per finished row (with each held-out problem's
                             correctness, greedy and maj@k): a finished row is never rerun
    rows/<row>/              the row's work: pairs, training output, eval report (resumable)
    shared/rollouts-*.jsonl  rollouts of a start model, shared by rows starting from it
    registry/                the versions the rows trained
    summary.json             every row of the last invocation, with its per-problem results
    paired.json              the papers' orderings tested paired (trainer/experiment_claims.py)
    plots/*.png              chosen / rejected log-prob curves per trained row

The budget (``--budget-minutes``) bounds the wall time of one invocation: a row whose
estimated time (the last finished row of the same kind, less its shared rollouts) exceeds what is left is
skipped with the reason; a row still running when the budget ends is cancelled (its training
subprocess killed) and reported as skipped; its partial work (rollouts, saved training state)
is kept, so a rerun with more budget continues it.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from agent.datasets import Problem
from agent.modelstore import EMBEDDED_SPEC
from agent.runtime import Resources
from agent.tasks import LEVELS
from agent.trajectory import Mode
from trainer.experiment_claims import evaluate_claims, pool_seeds
from trainer.experiment_report import Accuracy, RowResult, bootstrap_ci, correct_by_problem, plot_curves
from trainer.runstate import write_json_durable
from trainer.settings import TrainerSettings

log = logging.getLogger(__name__)

Family = Literal["irpo", "mdpo"]
RowKind = Literal["zero_shot", "vote", "sft_gold", "sft_correct", "preference", "revise"]
DATASETS = ("tasks", "synthetic", "gsm8k", "math")
KEEP_AFTER_PUBLISH = {"curves.jsonl", "train_result.json"}
WARMUP = "warmup"  # RowSpec.start / ref: the warm-up row's model (the base model with --no-warmup)


class ExperimentConfig(BaseModel):
    """Everything that decides what the rows compute (the budget does not: it only bounds time).

    The defaults are the cpu scale (the embedded model on a 2-core machine, every row of a
    family within the budget); :data:`SCALES` and :data:`FAMILY_SCALES` state what the gpu scale
    and each family change. The command line takes its options from these fields.
    """

    model_config = ConfigDict(extra="forbid")

    family: Family
    dataset: str = Field("tasks", description="tasks (graded synthetic family), synthetic, gsm8k or math")
    data_dir: Path | None = Field(None, description="folder with gsm8k/ and math/ JSONL")
    levels: list[int] = Field(default_factory=lambda: list(LEVELS), description="tasks: difficulty levels, e.g. 1-3 "
                              "or 1,2,5")
    model: str = Field(EMBEDDED_SPEC, description="model spec: smollm2, a checkpoint directory or a hub id")
    engine: Literal["transformers", "vllm"] = Field(
        "transformers", description="engine of every row's rollouts and evaluations: the in-process one, or a vLLM "
        "server the command starts for the experiment (from .venv-vllm), reloaded in place with each row's weights")
    train_limit: int = Field(32, ge=1, description="training problems")
    eval_limit: int = Field(40, ge=1, description="held-out problems every row is measured on")
    eval_split: Literal["train", "test"] = Field(
        "train", description="where gsm8k / math held-out problems come from: train (the train split's last rows, "
        "disjoint from the training problems) or test (the test split, what the papers report)")
    samples: int = Field(4, ge=2, description="rollouts per training problem (IRPO's N)")
    maj_k: int = Field(4, ge=2, description="samples of the maj@k rows")
    temperature: float = Field(0.8, ge=0, description="rollout and maj@k temperature")
    pairs_k: int = Field(2, ge=1, description="IRPO pairs per problem (K)")
    max_turns: int = Field(2, ge=1, description="tool calls per episode in every row (rollouts and evaluation)")
    max_new_tokens: int = Field(128, ge=16, description="tokens per model turn (a gold task turn takes about 60)")
    warmup: bool = Field(True, description="preference rows start from the SFT-on-gold model")
    warmup_lr: float = Field(1e-5, gt=0, description="learning rate of the SFT rows (warm-up, STaR, RAFT)")
    warmup_epochs: int = Field(4, ge=1, description="epochs of the SFT-on-gold warm-up over its gold trajectories")
    lr: float = Field(5e-6, gt=0, description="learning rate of the preference rows")
    beta: float = Field(0.1, gt=0, description="DPO temperature")
    alpha: float = Field(1.0, ge=0, description="NLL coefficient of DPO+NLL")
    srpo_alpha: float = Field(0.8, ge=0, le=1, description="SRPO: weight of the self-improvement loss against the "
                              "generative one (convex; 0.8 as in the only public implementation)")
    revisions: int = Field(2, ge=1, description="SRPO rows: greedy self-revisions after each held-out answer (k)")
    epochs: int = Field(1, ge=1, description="epochs over the pairs of the preference and STaR / RAFT rows")
    max_steps: int | None = Field(None, ge=1, description="optimizer steps at most per training")
    batch_size: int = Field(4, ge=1, description="pairs per optimizer step")
    max_length: int = Field(1024, ge=16, description="tokens per training sequence at most")
    concurrency: int = Field(8, ge=1, description="problems in flight during rollouts and evaluation")
    seed: int = Field(0, description="the seed of the training / held-out split (which problems), the rollouts, "
                      "maj@k sampling and the training runs")

    @field_validator("levels", mode="before")
    @classmethod
    def _levels(cls, v: object) -> object:
        if isinstance(v, str):
            from agent.tasks import parse_levels

            try:
                return parse_levels(v)
            except ValueError as exc:
                raise ValueError(str(exc)) from None
        return v


Scale = Literal["cpu", "gpu"]
BUDGET_MINUTES = 110.0  # the wall-time bound of one invocation at either scale
# What a scale changes from the defaults above. gpu: more problems and samples for tighter
# intervals, more steps at the usual DPO learning rate (on cpu a preference row trains ~16 steps:
# at 1e-6 DPO's loss barely moved and the accuracy not at all, hence the cpu default 5e-6).
SCALES: dict[Scale, dict[str, Any]] = {
    "cpu": {},
    "gpu": {"train_limit": 256, "eval_limit": 250, "samples": 8, "maj_k": 8, "lr": 1e-6},
}
# What a family changes at a scale. The warm-up must converge before the other rows are compared
# with it (README, "Does it learn?"): the irpo warm-up gets 8 epochs. M-DPO pairs only the model's
# own samples, one correct and one incorrect per problem: the mdpo family takes easier levels, more
# samples and smaller batches (more warm-up steps).
FAMILY_SCALES: dict[tuple[Scale, Family], dict[str, Any]] = {
    ("cpu", "irpo"): {"warmup_epochs": 8},
    ("cpu", "mdpo"): {"levels": [1, 2, 3], "samples": 8, "batch_size": 2},
}


# What a real data set changes at a scale (the real-data track). gsm8k: held out from the test split
# (the papers' measure), n = 200 at the cpu scale for the paired tests; 256 tokens per model turn:
# a GSM8K rationale's first turn as the cold start writes it (its reasoning and its cell,
# trainer/gsm8k_cells.py) took 126 SmolLM2 tokens at the median and 211 at the 90th percentile (the
# first 3000 train rows), so 128 would cut half of them and 256 fits 96%.
DATASET_SCALES: dict[tuple[Scale, str], dict[str, Any]] = {
    ("cpu", "gsm8k"): {"eval_split": "test", "eval_limit": 200, "max_new_tokens": 256},
    ("gpu", "gsm8k"): {"eval_split": "test", "max_new_tokens": 256},
}


def resolve_scale(scale: Scale | Literal["auto"]) -> Scale:
    """``auto``: gpu when CUDA is available."""
    if scale != "auto":
        return scale
    import torch

    return "gpu" if torch.cuda.is_available() else "cpu"


def scale_defaults(scale: Scale, family: Family, dataset: str = "tasks") -> dict[str, Any]:
    """The fields a scale, family and data set set (an explicitly given option wins over them)."""
    return {**SCALES[scale], **FAMILY_SCALES.get((scale, family), {}), **DATASET_SCALES.get((scale, dataset), {})}


def experiment_config(family: Family, scale: Scale, **given: Any) -> ExperimentConfig:
    """The config of ``family`` at ``scale``: the defaults, what the scale (and the data set) change,
    what was given."""
    defaults = scale_defaults(scale, family, given.get("dataset") or "tasks")
    return ExperimentConfig(family=family, **{**defaults, **given})


def preset_help() -> dict[str, str]:
    """Per field, the values the scales and families set instead of the default (for --help)."""
    notes: dict[str, list[str]] = {}
    for scale, values in SCALES.items():
        for name, value in values.items():
            notes.setdefault(name, []).append(f"{scale} {value}")
    for (scale, family), values in FAMILY_SCALES.items():
        for name, value in values.items():
            shown = ",".join(map(str, value)) if isinstance(value, list) else value
            notes.setdefault(name, []).append(f"{scale} {family} {shown}")
    for (scale, dataset), values in DATASET_SCALES.items():
        for name, value in values.items():
            notes.setdefault(name, []).append(f"{scale} {dataset} {value}")
    return {name: "; ".join(v) for name, v in notes.items()}


class ExperimentError(ValueError):
    """A run that cannot start (bad config, a run directory holding another config)."""


@dataclass(frozen=True)
class RowSpec:
    """One row of a comparison table.

    A ``vote`` row trains nothing: it measures maj@k of its ``start`` model (the papers'
    "+ majority vote" rows; the zero-shot row does the same for the base model). A ``revise`` row
    trains nothing either: it measures its ``start`` model greedy and after ``revisions`` greedy
    self-revisions (an untrained reviser, next to SRPO's). ``revise`` on a trained row: its
    evaluation also measures the answers after the revisions.

    ``start`` is the model the row begins from: ``WARMUP`` (the SFT-on-gold row's model, or the
    base model with ``--no-warmup``) or the name of an earlier row whose trained model it
    continues (iteration 2 starts from iteration 1). ``ref`` is the DPO reference: ``None`` means
    the starting policy (IRPO and M-DPO's previous-iteration reference), otherwise ``WARMUP`` or a
    row name for a reference fixed at that model. ``mode`` is the prompt of a zero-shot or vote
    row: ``tir`` (the agent's python tool, as every trained row) or ``cot`` (IRPO's chain-of-thought
    prompt, no tool; its one model turn gets the tokens of a whole tool episode, max_turns x
    max_new_tokens, so neither mode has the larger budget).
    """

    name: str
    label: str
    kind: RowKind
    loss: str | None = None
    scheme: Literal["irpo", "mdpo", "scpo", "srpo"] | None = None
    start: str = WARMUP
    ref: str | None = None
    iteration: int = 1
    mode: Mode = Mode.tir
    revise: bool = False


ROWS: dict[Family, list[RowSpec]] = {
    "irpo": [
        RowSpec("zero_shot", "zero-shot", "zero_shot"),
        RowSpec("zero_shot_cot", "zero-shot, chain of thought", "zero_shot", mode=Mode.cot),
        RowSpec("sft_gold", "SFT on gold (warm-up)", "sft_gold", loss="sft"),
        RowSpec("sft_gold_vote", "SFT on gold (warm-up)", "vote"),
        RowSpec("star", "STaR (SFT on correct samples)", "sft_correct", loss="sft", scheme="irpo"),
        RowSpec("dpo_1", "DPO it.1", "preference", loss="dpo", scheme="irpo"),
        RowSpec("dpo_nll_1", "DPO+NLL (IRPO) it.1", "preference", loss="dpo+nll", scheme="irpo"),
        RowSpec("dpo_nll_2", "DPO+NLL (IRPO) it.2", "preference", loss="dpo+nll", scheme="irpo", start="dpo_nll_1",
                iteration=2),
        RowSpec("dpo_nll_3", "DPO+NLL (IRPO) it.3", "preference", loss="dpo+nll", scheme="irpo", start="dpo_nll_2",
                iteration=3),
        RowSpec("dpo_nll_3_vote", "DPO+NLL (IRPO) it.3", "vote", start="dpo_nll_3"),
        RowSpec("scpo_1", "ScPO it.1 (no gold labels)", "preference", loss="dpo+nll", scheme="scpo"),
        # SRPO (Choi et al.): the it.1 DPO+NLL model revising its own answers untrained, then a model
        # trained with the SRPO loss on revision pairs from the same warm-up rollouts
        RowSpec("dpo_nll_1_revise", "DPO+NLL (IRPO) it.1", "revise", start="dpo_nll_1"),
        RowSpec("srpo_1", "SRPO it.1", "preference", loss="srpo", scheme="srpo", revise=True),
    ],
    "mdpo": [
        RowSpec("zero_shot", "zero-shot", "zero_shot"),
        RowSpec("zero_shot_cot", "zero-shot, chain of thought", "zero_shot", mode=Mode.cot),
        RowSpec("sft_gold", "SFT on gold (warm-up)", "sft_gold", loss="sft"),
        RowSpec("sft_gold_vote", "SFT on gold (warm-up)", "vote"),
        RowSpec("raft", "RAFT (SFT on correct samples)", "sft_correct", loss="sft", scheme="mdpo"),
        RowSpec("mdpo_1", "M-DPO it.1", "preference", loss="dpo", scheme="mdpo"),
        RowSpec("mkto_1", "M-KTO it.1", "preference", loss="kto", scheme="mdpo"),
        RowSpec("mdpo_2_fixed", "M-DPO it.2, fixed reference", "preference", loss="dpo", scheme="mdpo",
                start="mdpo_1", ref=WARMUP, iteration=2),
        RowSpec("mdpo_2_prev", "M-DPO it.2, previous-iteration reference", "preference", loss="dpo", scheme="mdpo",
                start="mdpo_1", iteration=2),
        RowSpec("scpo_1", "ScPO it.1 (no gold labels)", "preference", loss="dpo+nll", scheme="scpo"),
    ],
}


def experiment_split(config: ExperimentConfig, settings: TrainerSettings) -> tuple[list[Problem], list[Problem]]:
    """Training problems and disjoint held-out problems (for gsm8k / math with ``eval_split`` test:
    from the train and the test split)."""
    if config.dataset == "tasks":
        from agent.tasks import task_problems

        return (task_problems(config.train_limit, split="train", levels=config.levels, seed=config.seed),
                task_problems(config.eval_limit, split="heldout", levels=config.levels, seed=config.seed))
    if config.dataset not in DATASETS:
        raise ExperimentError(f"dataset must be one of {', '.join(DATASETS)}, not {config.dataset!r}")
    from trainer.collect import dataset_split
    from trainer.recipe import RetrainRequest, resolve_recipe

    request = RetrainRequest(dataset=config.dataset, data_dir=config.data_dir, train_limit=config.train_limit,
                             eval_limit=config.eval_limit, seed=config.seed)
    recipe = resolve_recipe(settings, request)
    if config.eval_split == "train":
        split = dataset_split(recipe, shuffle=True)
        return split.train, split.heldout
    if config.dataset not in ("gsm8k", "math"):
        raise ExperimentError(f"--eval-split test needs gsm8k or math, not {config.dataset}")
    from agent.datasets import load_problems

    # the training problems: the train split's first rows (or a seeded draw), all of it usable here
    # since nothing is held out of it; the held-out ones: the test split's first rows (or a seeded draw)
    def draw(split: str, n: int) -> list[Problem]:
        rows = load_problems(config.dataset, split, data_dir=recipe.data_dir)
        if n > len(rows):
            raise ExperimentError(f"{config.dataset} {split} split has {len(rows)} problems, fewer than {n}")
        if config.seed != 0:
            import random

            rows = list(rows)
            random.Random(f"{split}-{config.seed}").shuffle(rows)
        return rows[:n]

    return draw("train", config.train_limit), draw("test", config.eval_limit)


ShowProgress = Callable[[str, int, int], None]  # (what is happening, done, total): the experiment's progress line


def _no_progress(_: str, __: int, ___: int) -> None:
    return None


def _reusable_estimate(row: RowResult) -> float:
    """Seconds a row like ``row`` will take: its own, less the rollouts (shared by every
    preference row from the same start model, so the next one reads them from the file)."""
    return max(0.0, row.seconds - row.step_seconds.get("rollouts", 0.0))


class Experiment:
    """One experiment run directory; :meth:`run` does (or resumes) every row that fits the budget."""

    def __init__(self, config: ExperimentConfig, run_dir: Path, settings: TrainerSettings, *,
                 budget_s: float | None = None, rows: list[str] | None = None,
                 progress: ShowProgress = _no_progress) -> None:
        from trainer.registry import Registry

        names = [spec.name for spec in ROWS[config.family]]
        unknown = [r for r in rows or [] if r not in names]
        if unknown:
            raise ExperimentError(f"unknown row {', '.join(unknown)}; the {config.family} rows are {', '.join(names)}")
        self.only = set(rows) if rows else None
        self.config = config
        self.dir = Path(run_dir)
        self.settings = settings
        self.budget_s = budget_s
        self.progress = progress
        if config.engine == "vllm" and settings.engine != "vllm":
            raise ExperimentError("engine vllm: the experiment needs its own vLLM server (`mathagent experiment "
                                  "--engine vllm` starts one and sets MATHAGENT_ENGINE / MATHAGENT_VLLM_URL for it)")
        self._check_config()
        self.registry = Registry(self.dir / "registry")
        self.resources = Resources(settings, solver_settings=settings.solver_settings().model_copy(update={
            "sample_temperature": config.temperature, "max_turns": config.max_turns,
            "max_new_tokens": config.max_new_tokens}))
        self._split: tuple[list[Problem], list[Problem]] | None = None

    # -- the run directory ----------------------------------------------------------------------
    def _check_config(self) -> None:
        path = self.dir / "config.json"
        if path.is_file():
            old = ExperimentConfig.model_validate_json(path.read_text())
            if old != self.config:
                diff = [k for k in ExperimentConfig.model_fields if getattr(old, k) != getattr(self.config, k)]
                raise ExperimentError(f"{self.dir} holds an experiment with a different config (differs in: "
                                      f"{', '.join(diff)}); use another --run-dir")
        else:
            self.dir.mkdir(parents=True, exist_ok=True)
            write_json_durable(path, self.config.model_dump_json(indent=2))

    def row_file(self, name: str) -> Path:
        return self.dir / "rows" / f"{name}.json"

    def row_dir(self, name: str) -> Path:
        d = self.dir / "rows" / name
        d.mkdir(parents=True, exist_ok=True)
        return d

    def finished(self, name: str) -> RowResult | None:
        path = self.row_file(name)
        if not path.is_file():
            return None
        row = RowResult.model_validate_json(path.read_text())
        cache = self.dir / "rows" / name / "eval.json"
        if row.greedy_by_problem is None and cache.is_file():
            # a row stored before per-problem results were recorded: its evaluation cache holds them
            from agent.evaluate import EvalReport

            outcomes = EvalReport.model_validate_json(cache.read_text()).outcomes
            row.greedy_by_problem = correct_by_problem(outcomes, "greedy")
            if outcomes and all(o.maj_correct is not None for o in outcomes):
                row.maj_by_problem = correct_by_problem(outcomes, "maj")
            if outcomes and all(o.revised_correct is not None for o in outcomes):
                row.revised_by_problem = correct_by_problem(outcomes, "revised")
        return row

    # -- resources ------------------------------------------------------------------------------
    def split(self) -> tuple[list[Problem], list[Problem]]:
        if self._split is None:
            self._split = experiment_split(self.config, self.settings)
        return self._split

    def base(self) -> tuple[Path, str]:
        from agent.modelstore import resolve

        resolved = resolve(self.config.model, self.settings.state_dir)
        return Path(resolved.path), resolved.version

    # -- the run --------------------------------------------------------------------------------
    async def run(self) -> list[RowResult]:
        t0 = time.monotonic()
        rows: list[RowResult] = []
        seconds_by_kind: dict[str, tuple[str, float]] = {}
        rollouts_s = 0.0  # the last row's sampling time: a row that samples a new start model needs it again

        def remember(spec: RowSpec, row: RowResult) -> None:
            nonlocal rollouts_s
            seconds_by_kind[spec.kind] = (spec.label, _reusable_estimate(row))
            rollouts_s = max(rollouts_s, row.step_seconds.get("rollouts", 0.0))

        try:
            for spec in ROWS[self.config.family]:
                done = self.finished(spec.name)
                if done is not None:
                    rows.append(done)
                    remember(spec, done)
                    continue
                head: dict[str, Any] = dict(name=spec.name, label=spec.label, kind=spec.kind)
                if self.only is not None and spec.name not in self.only:
                    rows.append(RowResult(**head, status="skipped", reason="not selected (--rows)"))
                    continue
                missing = self._missing_dependency(spec)
                if missing is not None:
                    rows.append(RowResult(**head, status="skipped", reason=missing))
                    continue
                left = None if self.budget_s is None else self.budget_s - (time.monotonic() - t0)
                if left is not None:
                    like = seconds_by_kind.get(spec.kind)
                    if like is not None and spec.kind in ("sft_correct", "preference") and \
                            not self.rollouts_path(spec).is_file():
                        like = (like[0], like[1] + rollouts_s)
                    if left <= 0 or (like is not None and like[1] > left):
                        why = f"{max(left, 0):.0f}s of the budget left"
                        if like is not None:
                            why += f"; needs about {like[1]:.0f}s (like {like[0]})"
                        rows.append(RowResult(**head, status="skipped", reason=why))
                        continue
                started = time.monotonic()
                try:
                    result = await asyncio.wait_for(self.row(spec), left)
                except TimeoutError:
                    rows.append(RowResult(**head, status="skipped", reason=(
                        f"budget ran out after {time.monotonic() - started:.0f}s in this row; partial work kept, "
                        "a rerun with more budget continues it")))
                    continue
                except Exception as exc:
                    from trainer.launch import TrainingFailed

                    if not isinstance(exc, TrainingFailed | ExperimentError):
                        raise
                    log.error("row %s failed: %s", spec.name, exc)
                    rows.append(RowResult(**head, status="failed", reason=str(exc).splitlines()[0][:200]))
                    continue
                result.seconds = round(time.monotonic() - started, 1)
                result.kind = spec.kind
                if result.status == "done":
                    write_json_durable(self.row_file(spec.name), result.model_dump_json(indent=2))
                    remember(spec, result)
                    self._cleanup(spec.name)
                rows.append(result)
        finally:
            await self.resources.aclose()
        plot_curves(rows, self.dir, self.dir / "plots")
        write_json_durable(self.dir / "summary.json",
                           "[" + ",".join(r.model_dump_json() for r in rows) + "]")
        write_json_durable(self.dir / "paired.json", "[" + ",".join(
            c.model_dump_json() for c in evaluate_claims(rows, seed=self.config.seed)) + "]")
        return rows

    def _missing_dependency(self, spec: RowSpec) -> str | None:
        """Why ``spec`` cannot run yet (a row it starts from or uses as reference is not done), or None."""
        needs = [n for n in (spec.start if spec.kind in ("vote", "sft_correct", "preference", "revise") else None,
                             spec.ref) if n]
        for need in needs:
            row = "sft_gold" if need == WARMUP else need
            if (need != WARMUP or self.config.warmup) and self.finished(row) is None:
                what = "the warm-up row" if need == WARMUP else f"row {need}"
                return f"{'starts from' if need == spec.start else 'uses as reference'} {what}, not done"
        return None

    def model_of(self, name: str) -> tuple[Path, str, str | None]:
        """The model a row names as start or reference: (weights, label, registry version or None for the base)."""
        if name == WARMUP and not self.config.warmup:
            path, base_version = self.base()
            return path, f"base {base_version}", None
        row = self.finished("sft_gold" if name == WARMUP else name)
        if row is None or row.version is None:
            raise ExperimentError(f"row {name} has no trained model")
        return self.registry.path(row.version), row.version, row.version

    async def row(self, spec: RowSpec) -> RowResult:
        if spec.kind in ("zero_shot", "vote"):
            return await self.row_vote(spec)
        if spec.kind == "sft_gold":
            return await self.row_sft_gold(spec)
        if spec.kind == "sft_correct":
            return await self.row_sft_correct(spec)
        if spec.kind == "revise":
            return await self.row_revise(spec)
        return await self.row_preference(spec)

    # -- rows -----------------------------------------------------------------------------------
    async def row_vote(self, spec: RowSpec) -> RowResult:
        """Greedy and maj@k of the base model (zero-shot) or of the row's start model (vote)."""
        from agent.evaluate import EvalReport, evaluate
        from agent.solver import Solver

        _, heldout = self.split()
        if spec.kind == "zero_shot":
            path, version = self.base()
            start = f"base {version}"
        else:
            path, start, _ = self.model_of(spec.start)
            version = start.split()[-1]
        cache = self.row_dir(spec.name) / "eval.json"
        t0 = time.monotonic()
        if cache.is_file():
            report = EvalReport.model_validate_json(cache.read_text())
        else:
            sandbox = await self.resources.sandbox()
            engine = await self._engine(path, version)
            count = 0

            def on_done(_: object) -> None:
                nonlocal count
                count += 1
                self.progress(f"{spec.label}: greedy + maj@{self.config.maj_k}", count, len(heldout))

            settings = self.resources.solver_settings()
            if spec.mode is Mode.cot:
                settings = settings.model_copy(update={"max_new_tokens": self.config.max_turns * self.config.max_new_tokens})
            try:
                solver = Solver(engine, sandbox, None, settings)
                report = await evaluate(solver, heldout, dataset=self.config.dataset, mode=spec.mode,
                                        samples=self.config.maj_k, concurrency=self.config.concurrency,
                                        seed=self.config.seed, on_done=on_done)
            finally:
                await engine.aclose()
            write_json_durable(cache, report.model_dump_json())
        return RowResult(
            name=spec.name, label=spec.label, status="done", start=start,
            greedy=bootstrap_ci([o.greedy_correct for o in report.outcomes], seed=self.config.seed),
            maj=bootstrap_ci([bool(o.maj_correct) for o in report.outcomes], seed=self.config.seed),
            greedy_by_problem=correct_by_problem(report.outcomes, "greedy"),
            maj_by_problem=correct_by_problem(report.outcomes, "maj"),
            maj_k=self.config.maj_k, tool_call_rate=report.tool_call_rate,
            step_seconds={"eval": round(time.monotonic() - t0, 1)},
        )

    async def row_revise(self, spec: RowSpec) -> RowResult:
        """Greedy answers of the start model, then revised ``revisions`` times (nothing trained)."""
        path, start, _ = self.model_of(spec.start)
        t0 = time.monotonic()
        report = await self._eval(spec, path, start.split()[-1], self.row_dir(spec.name) / "eval.json")
        return RowResult(name=spec.name, label=spec.label, status="done", start=start, tool_call_rate=report.tool_call_rate,
                         step_seconds={"eval": round(time.monotonic() - t0, 1)}, **self._measures(report))

    def _measures(self, report: Any) -> dict[str, Any]:
        """A RowResult's accuracies and per-problem results from an evaluation report."""
        seed, outcomes = self.config.seed, report.outcomes
        out: dict[str, Any] = dict(greedy=bootstrap_ci([o.greedy_correct for o in outcomes], seed=seed),
                                   greedy_by_problem=correct_by_problem(outcomes, "greedy"))
        if report.revisions:
            out.update(revised=bootstrap_ci([bool(o.revised_correct) for o in outcomes], seed=seed),
                       revised_by_problem=correct_by_problem(outcomes, "revised"), revisions=report.revisions)
        return out

    async def row_sft_gold(self, spec: RowSpec) -> RowResult:
        """SFT on the gold solutions of the training problems, rendered as tool trajectories (the
        gold Python run in the sandbox) after the exact prompt ids the agent would use."""
        from agent import prompts
        from agent.engines.tokens import TokenizerOps
        from agent.modelstore import load_tokenizer
        from agent.trajectory import Segment, SegmentKind, Trajectory
        from trainer.collect import from_problem
        from trainer.examples import example_from_trajectory
        from trainer.io import write_pairs
        from trainer.pairs import Pair, Scheme
        from trainer.rollouts import gold_trajectory_for

        train, _ = self.split()
        path, version = self.base()
        d = self.row_dir(spec.name)
        times: dict[str, float] = {}
        t0 = time.monotonic()
        pairs_path = d / "pairs.jsonl"
        if not pairs_path.is_file():
            tokenizer = await asyncio.to_thread(load_tokenizer, path)
            ops = TokenizerOps()
            ops.tokenizer = tokenizer
            sandbox = await self.resources.sandbox()
            max_turns = self.resources.solver_settings().max_turns
            pairs = []
            for n, p in enumerate(train, 1):
                ids = ops.chat_prefix(prompts.messages(prompts.user_message(p.problem, p.mode, max_turns=max_turns)))
                first = Trajectory(problem=p.problem, segments=[Segment(kind=SegmentKind.prompt, text=ops.decode(ids),
                                                                          token_ids=ids)])
                gold = await gold_trajectory_for(from_problem(p), first, tokenizer, sandbox)
                self.progress(f"{spec.label}: gold trajectories", n, len(train))
                if gold is None:
                    continue
                ex = example_from_trajectory(gold)
                # the sft loss reads the chosen sequence only (trainer/items.py); rejected is a placeholder
                pairs.append(Pair(problem_key=p.id, problem=p.problem, mode=p.mode, scheme=Scheme.irpo, chosen=ex,
                                  rejected=ex))
            if not pairs:
                raise ExperimentError(f"{self.config.dataset}: no training problem has a gold solution to SFT on")
            write_pairs(pairs, pairs_path)
        times["gold"] = round(time.monotonic() - t0, 1)
        n_pairs = sum(1 for line in pairs_path.read_text().splitlines() if line.strip())
        trained = await self.train_and_publish(spec, d, start_path=path, start=f"base {version}", parent=None, n_pairs=n_pairs,
                                               lr=self.config.warmup_lr, epochs=self.config.warmup_epochs, times=times)
        return trained.model_copy(update={"pairs": n_pairs})

    def rollouts_path(self, spec: RowSpec) -> Path:
        """The rollouts file of the row's start model and iteration (shared by rows that start alike)."""
        start = self.model_of(spec.start)[1]
        return self.dir / "shared" / f"rollouts-{start.replace(' ', '-')}-it{spec.iteration}.jsonl"

    async def rollouts(self, spec: RowSpec, times: dict[str, float]) -> tuple[list[Any], dict[str, Any], Path, str, str | None]:
        """Sample the training problems with the row's start model (shared by every row that starts
        from the same model at the same iteration): the trajectories, the gold trajectories by
        problem key, and the start model (weights, label, registry version)."""
        from agent.modelstore import load_tokenizer
        from agent.solver import Solver
        from trainer.collect import from_problem
        from trainer.pairs import problem_key
        from trainer.rollouts import run_rollouts

        train, _ = self.split()
        start_path, start, parent = self.model_of(spec.start)
        t0 = time.monotonic()
        rollouts_path = self.rollouts_path(spec)
        sandbox = await self.resources.sandbox()
        engine = await self._engine(start_path, start.split()[-1])
        try:
            tokenizer = await asyncio.to_thread(load_tokenizer, start_path)
            solver = Solver(engine, sandbox, None, self.resources.solver_settings())

            async def on_done(done: int, total: int) -> None:
                self.progress(f"{spec.label}: rollouts from {start}", done, total)

            records = await run_rollouts(
                solver, [from_problem(p) for p in train], rollouts_path, samples=self.config.samples,
                temperature=self.config.temperature, concurrency=self.config.concurrency, seed=self.config.seed,
                iteration=spec.iteration, tokenizer=tokenizer, on_done=on_done,
            )
        finally:
            await engine.aclose()
        times["rollouts"] = round(time.monotonic() - t0, 1)
        trajs = [t for r in records.values() for t in r.trajectories]
        gold = {problem_key(r.gold): r.gold for r in records.values() if r.gold is not None}
        return trajs, gold, start_path, start, parent

    async def row_sft_correct(self, spec: RowSpec) -> RowResult:
        """STaR / RAFT: SFT on the start model's own correct samples (RAFT after M-DPO's filters)."""
        from trainer.examples import example_from_trajectory
        from trainer.io import write_pairs
        from trainer.pairs import Pair, Scheme, mdpo_filter, problem_key

        d = self.row_dir(spec.name)
        times: dict[str, float] = {}
        trajs, _, start_path, start, parent = await self.rollouts(spec, times)
        counts = {"samples": len(trajs), "correct": sum(t.correct is True for t in trajs)}
        pairs, seen = [], set()
        for t in trajs:
            if t.correct is not True:
                continue
            if spec.scheme == "mdpo" and (why := mdpo_filter(t, self.config.max_length)) is not None:
                counts[f"dropped_{why}"] = counts.get(f"dropped_{why}", 0) + 1
                continue
            if (key := (problem_key(t), tuple(t.token_ids()))) in seen:
                counts["dropped_duplicate"] = counts.get("dropped_duplicate", 0) + 1
                continue
            seen.add(key)
            ex = example_from_trajectory(t)
            # the sft loss reads the chosen sequence only (trainer/items.py); rejected is a placeholder
            pairs.append(Pair(problem_key=key[0], problem=t.problem, mode=t.mode, scheme=Scheme.irpo, chosen=ex,
                              rejected=ex))
        counts["kept"] = len(pairs)
        head: dict[str, Any] = dict(name=spec.name, label=spec.label, start=start, loss=spec.loss, pairs=len(pairs),
                                    pair_counts=counts)
        if not pairs:
            return RowResult(**head, status="skipped", reason=f"no correct sample to train on ({counts})")
        write_pairs(pairs, d / "pairs.jsonl")
        trained = await self.train_and_publish(spec, d, start_path=start_path, start=start, parent=parent,
                                               n_pairs=len(pairs), lr=self.config.warmup_lr, times=times)
        return trained.model_copy(update={"pairs": len(pairs), "pair_counts": counts})

    async def row_preference(self, spec: RowSpec) -> RowResult:
        from trainer.io import write_pairs
        from trainer.pairs import irpo_pairs, mdpo_pairs, scpo_pairs, srpo_pairs

        d = self.row_dir(spec.name)
        times: dict[str, float] = {}
        trajs, gold, start_path, start, parent = await self.rollouts(spec, times)
        if spec.scheme == "irpo":
            pair_set = irpo_pairs(trajs, k=self.config.pairs_k, gold=gold, max_length=self.config.max_length)
        elif spec.scheme == "scpo":
            # ScPO sees no gold labels: the grades are dropped, pairs come from the majority vote
            unlabelled = [t.model_copy(update={"correct": None, "gold": None}) for t in trajs]
            pair_set = scpo_pairs(unlabelled, max_length=self.config.max_length)
        elif spec.scheme == "srpo":
            pair_set = srpo_pairs(trajs, k=self.config.pairs_k, gold=gold, max_length=self.config.max_length,
                                  max_turns=self.config.max_turns)
        else:
            pair_set = mdpo_pairs(trajs, max_length=self.config.max_length, seed=self.config.seed)
        head: dict[str, Any] = dict(name=spec.name, label=spec.label, start=start, loss=spec.loss,
                                    pairs=len(pair_set.pairs), pair_counts=pair_set.counts)
        if not pair_set.pairs:
            return RowResult(**head, status="skipped", reason=f"no pairs from the rollouts ({pair_set.counts})")
        write_pairs(pair_set.pairs, d / "pairs.jsonl")
        trained = await self.train_and_publish(spec, d, start_path=start_path, start=start, parent=parent,
                                               n_pairs=len(pair_set.pairs), lr=self.config.lr, times=times)
        return trained.model_copy(update={"pairs": len(pair_set.pairs), "pair_counts": pair_set.counts})

    # -- the shared tail: train, publish, evaluate ----------------------------------------------
    async def train_and_publish(self, spec: RowSpec, d: Path, *, start_path: Path, start: str, parent: str | None,
                                n_pairs: int, lr: float, times: dict[str, float], epochs: int | None = None) -> RowResult:
        from trainer.config import TrainConfig
        from trainer.iterate import candidate_dir
        from trainer.launch import run_training
        from trainer.train import TrainResult

        assert spec.loss is not None
        c = self.config
        out = d / "train"
        ref_path, ref_label = (None, "start") if spec.ref is None else self.model_of(spec.ref)[:2]
        ref = None if ref_path is None else str(ref_path)
        config = TrainConfig(
            pairs=d / "pairs.jsonl", out=out, model=str(start_path), ref_model=ref, state_dir=self.settings.state_dir, loss=spec.loss,
            beta=c.beta, alpha=c.srpo_alpha if spec.loss == "srpo" else c.alpha, lr=lr, epochs=epochs or c.epochs, max_steps=c.max_steps,
            per_device_batch_size=max(1, min(c.batch_size, n_pairs)), save_steps=10, max_length=c.max_length,
            seed=c.seed, resume=True, progress=False,
        )
        t0 = time.monotonic()
        if (out / "train_result.json").is_file():
            result = TrainResult.model_validate_json((out / "train_result.json").read_text())
        else:
            async def on_step(rec: dict[str, Any]) -> None:
                self.progress(f"{spec.label}: training ({spec.loss}) loss {rec.get('loss', 0):.3f}",
                              int(rec["step"]), 0)

            result = await run_training(config, d, processes=1, threads=self.settings.train_threads,
                                          on_step=on_step)
        times["train"] = round(time.monotonic() - t0, 1)

        t0 = time.monotonic()
        version = self._published(spec.name)
        if version is None:
            src = await asyncio.to_thread(candidate_dir, out, d / "candidate")
            manifest = await asyncio.to_thread(
                self.registry.publish, src, base_model=c.model, parent=parent, kind="full",
                training_config={"experiment": str(self.dir.name), "row": spec.name, "start": start,
                                 "train": config.model_dump(mode="json"), "lineage_iteration": spec.iteration,
                                 "reference": ref_label},
            )
            version = manifest.version
            shutil.rmtree(src, ignore_errors=True)
        times["publish"] = round(time.monotonic() - t0, 1)

        t0 = time.monotonic()
        report = await self._eval(spec, self.registry.path(version), version, d / "eval.json")
        times["eval"] = round(time.monotonic() - t0, 1)
        return RowResult(
            name=spec.name, label=spec.label, status="done", start=start, version=version, loss=spec.loss,
            **self._measures(report), tool_call_rate=report.tool_call_rate, train_steps=result.steps, loss_first=result.first_loss,
            loss_last=result.last.get("loss"), curves=str((out / "curves.jsonl").relative_to(self.dir)),
            step_seconds=times,
        )

    def _published(self, row: str) -> str | None:
        for m in self.registry.manifests():
            if m.training_config.get("row") == row and m.training_config.get("experiment") == self.dir.name:
                return m.version
        return None

    async def _eval(self, spec: RowSpec, path: Path, version: str, cache: Path) -> Any:
        from agent.evaluate import EvalReport
        from trainer.gate import evaluate_engine

        if cache.is_file():
            return EvalReport.model_validate_json(cache.read_text())
        _, heldout = self.split()
        sandbox = await self.resources.sandbox()
        engine = await self._engine(path, version)

        revises = spec.revise or spec.kind == "revise"

        async def on_done(done: int, total: int) -> None:
            what = f" with {self.config.revisions} revisions" if revises else ""
            self.progress(f"{spec.label}: evaluating {version}{what}", done, total)

        try:
            report = await evaluate_engine(engine, sandbox, heldout, dataset=self.config.dataset,
                                           settings=self.resources.solver_settings(), concurrency=self.config.concurrency,
                                           on_done=on_done, revisions=self.config.revisions if revises else 0)
        finally:
            await engine.aclose()
        write_json_durable(cache, report.model_dump_json())
        return report

    async def _engine(self, path: Path, version: str) -> Any:
        """The engine of one row's rollouts or evaluation: in process, or (``engine: vllm``) the
        experiment's own vLLM server with the row's weights loaded in place."""
        if self.config.engine == "vllm":
            from trainer.engines import reloaded_engine

            return await reloaded_engine(self.settings, path, version)
        return await self.resources.engine(path, version)

    def _cleanup(self, name: str) -> None:
        """After a row is recorded: its weights live in the registry; drop the training copy
        (and the optimizer state), keep the curves and the training result."""
        out = self.dir / "rows" / name / "train"
        if not out.is_dir():
            return
        for p in out.iterdir():
            if p.name in KEEP_AFTER_PUBLISH:
                continue
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)


async def run_experiment(config: ExperimentConfig, run_dir: Path, settings: TrainerSettings, *,
                         budget_s: float | None = None, rows: list[str] | None = None,
                         progress: ShowProgress = _no_progress) -> list[RowResult]:
    """Run (or resume) the experiment in ``run_dir``; returns every row (done, skipped or failed).
    ``rows`` limits the run to those rows (the others are reported as not selected)."""
    return await Experiment(config, run_dir, settings, budget_s=budget_s, rows=rows, progress=progress).run()


def seed_dirs(run_dir: Path, first_seed: int, seeds: int) -> dict[int, Path]:
    """The run directory of each seed (``first_seed``, ``first_seed + 1``, ...): ``run_dir`` itself
    for one seed, ``run_dir/seed-<seed>`` for several."""
    if seeds < 1:
        raise ExperimentError("--seeds must be >= 1")
    if seeds == 1:
        return {first_seed: Path(run_dir)}
    return {s: Path(run_dir) / f"seed-{s}" for s in range(first_seed, first_seed + seeds)}


async def run_seeds(config: ExperimentConfig, run_dir: Path, settings: TrainerSettings, *, seeds: int,
                    budget_s: float | None = None, rows: list[str] | None = None,
                    progress: ShowProgress = _no_progress) -> dict[int, list[RowResult]]:
    """The experiment once per seed (``config.seed`` and the next ``seeds - 1``; each seed changes
    the split, the sampling and the training), each in its directory of :func:`seed_dirs`. The
    budget bounds the whole invocation: each seed gets an equal share of what is left when it
    starts (time one seed leaves unused goes to the next). With several seeds, ``run_dir/paired.json``
    holds the claims pooled over them (:func:`trainer.experiment_claims.pool_seeds`)."""
    t0 = time.monotonic()
    dirs = seed_dirs(run_dir, config.seed, seeds)
    out: dict[int, list[RowResult]] = {}
    for i, (seed, d) in enumerate(dirs.items()):
        share = None if budget_s is None else max(0.0, budget_s - (time.monotonic() - t0)) / (seeds - i)

        def show(what: str, done: int, total: int, seed: int = seed) -> None:
            progress(what if seeds == 1 else f"seed {seed}: {what}", done, total)

        out[seed] = await run_experiment(config.model_copy(update={"seed": seed}), d, settings, budget_s=share,
                                         rows=rows, progress=show)
    if seeds > 1:
        write_json_durable(Path(run_dir) / "paired.json", "[" + ",".join(
            c.model_dump_json() for c in evaluate_claims(pool_seeds(out), seed=config.seed)) + "]")
    return out


__all__ = ["ROWS", "Accuracy", "Experiment", "ExperimentConfig", "ExperimentError", "RowResult", "run_experiment", "run_seeds",
           "seed_dirs"]
