"""The recipe of a retrain run: everything that decides what one run does, as one typed object.

A job request and ``mathagent iterate`` give overrides; the rest comes from
:class:`trainer.settings.TrainerSettings`. The resolved recipe is stored in the run's state
file, so a resumed run does exactly what it started to do.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

if TYPE_CHECKING:
    from trainer.settings import TrainerSettings

TRAIN_DATASETS = ("synthetic", "gsm8k", "math")


def parse_temperatures(text: str) -> list[float]:
    """``"0.8,0.8,1.3"`` -> [0.8, 0.8, 1.3]; a clear error for anything else."""
    try:
        temps = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ValueError(f"temperatures must be comma-separated numbers, not {text!r}") from None
    if not temps or any(t < 0 for t in temps):
        raise ValueError(f"temperatures must be one or more non-negative numbers, not {text!r}")
    return temps


class RetrainRequest(BaseModel):
    """What a caller may ask for (``POST /admin/retrain``, the schedule); None = the setting."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    iterations: int = Field(1, ge=1, le=100, description="iterations T (each: rollouts, pairs, train, gate, publish, "
                            "deploy)")
    dataset: str | None = Field(None, description=f"training set: {', '.join(TRAIN_DATASETS)} "
                                "(default MATHAGENT_RETRAIN_DATASET)")
    data_dir: Path | None = Field(None, description="folder with gsm8k/ and math/ JSONL (default MATHAGENT_DATA_DIR, "
                                  "else the hub)")
    train_limit: int | None = Field(None, ge=1, description="training prompts (default MATHAGENT_TRAIN_LIMIT)")
    eval_limit: int | None = Field(None, ge=1, description="held-out problems of the gate (default "
                                   "MATHAGENT_EVAL_LIMIT)")
    samples: int | None = Field(None, ge=2, le=64, description="rollouts per prompt N (default MATHAGENT_SAMPLES)")
    temperatures: list[float] | None = Field(None, max_length=100, description="rollout temperature per iteration, "
                                             "e.g. 0.8,0.8,1.3 (default MATHAGENT_TEMPERATURES)")
    tolerance: float | None = Field(None, ge=-1, le=1, description="the gate's non-inferiority margin: promote "
                                    "when the paired lower confidence bound of candidate - current accuracy is >= "
                                    "-tolerance; negative: it must be better by that much (default MATHAGENT_TOLERANCE)")
    force_promote: bool = Field(False, description="publish and deploy even when the eval gate refuses (its numbers "
                                "and the refusal are still recorded): an operator's override")
    max_steps: int | None = Field(None, ge=1, description="optimizer steps at most per iteration")
    use_logged: bool = Field(True, description="add prompts from logged, labelled trajectories")
    seed: int = Field(0, description="data and sampling seed")

    @field_validator("temperatures", mode="before")
    @classmethod
    def _temperature_list(cls, v: object) -> object:
        return parse_temperatures(v) if isinstance(v, str) else v

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, v: str | None) -> str | None:
        if v is not None and v not in TRAIN_DATASETS:
            raise ValueError(f"dataset must be one of {', '.join(TRAIN_DATASETS)}, not {v!r}")
        return v


class Recipe(BaseModel):
    """The fully resolved recipe of one run."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    iterations: int = Field(ge=1)
    dataset: str
    data_dir: Path | None
    train_limit: int
    eval_limit: int
    log_prompt_limit: int
    use_logged: bool
    samples: int
    temperatures: list[float]
    tolerance: float
    gate_min_problems: int = 1
    gate_alpha: float = 0.05
    force_promote: bool = False
    pairs_k: int
    scpo_tau: float
    loss: str
    lr: float
    beta: float
    alpha: float
    epochs: int
    max_steps: int | None
    batch_size: int
    save_steps: int
    train_processes: int
    concurrency: int
    max_length: int
    seed: int

    def temperature(self, lineage_iteration: int) -> float:
        """IRPO's schedule: the temperature of model generation ``lineage_iteration`` (1-based)."""
        return self.temperatures[min(lineage_iteration, len(self.temperatures)) - 1]


def resolve_recipe(settings: TrainerSettings, request: RetrainRequest) -> Recipe:
    def pick(value: Any, default: Any) -> Any:
        return default if value is None else value

    dataset = pick(request.dataset, settings.retrain_dataset)
    if dataset not in TRAIN_DATASETS:
        raise ValueError(f"MATHAGENT_RETRAIN_DATASET must be one of {', '.join(TRAIN_DATASETS)}, not {dataset!r}")
    return Recipe(
        iterations=request.iterations,
        dataset=dataset,
        data_dir=pick(request.data_dir, settings.data_dir),
        train_limit=pick(request.train_limit, settings.train_limit),
        eval_limit=pick(request.eval_limit, settings.eval_limit),
        log_prompt_limit=settings.log_prompt_limit,
        use_logged=request.use_logged,
        samples=pick(request.samples, settings.samples),
        temperatures=pick(request.temperatures, parse_temperatures(settings.temperatures)),
        tolerance=pick(request.tolerance, settings.tolerance),
        gate_min_problems=settings.gate_min_problems,
        gate_alpha=settings.gate_alpha,
        force_promote=request.force_promote,
        pairs_k=settings.pairs_k,
        scpo_tau=settings.scpo_tau,
        loss=settings.loss,
        lr=settings.lr,
        beta=settings.beta,
        alpha=settings.alpha,
        epochs=settings.epochs,
        max_steps=pick(request.max_steps, settings.max_steps),
        batch_size=settings.batch_size,
        save_steps=settings.save_steps,
        train_processes=settings.train_processes,
        concurrency=settings.rollout_concurrency,
        max_length=settings.max_total_tokens,
        seed=request.seed,
    )
