"""The recipe of a retrain run: everything that decides what one run does, as one typed object.

A job request and ``mathagent iterate`` give overrides; the rest comes from
:class:`trainer.settings.TrainerSettings`. The resolved recipe is stored in the run's state
file, so a resumed run does exactly what it started to do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from trainer.settings import TrainerSettings, parse_temperatures

TRAIN_DATASETS = ("synthetic", "gsm8k", "math")


class RetrainRequest(BaseModel):
    """What a caller may ask for (``POST /admin/retrain``, the schedule); None = the setting."""

    model_config = ConfigDict(extra="forbid")

    iterations: int = Field(1, ge=1, le=100)
    dataset: str | None = None
    data_dir: Path | None = None
    train_limit: int | None = Field(None, ge=1)
    eval_limit: int | None = Field(None, ge=1)
    samples: int | None = Field(None, ge=2, le=64)
    temperatures: list[float] | None = None
    tolerance: float | None = None
    max_steps: int | None = Field(None, ge=1)
    use_logged: bool = Field(True, description="add prompts from logged, labelled trajectories")
    seed: int = 0

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, v: str | None) -> str | None:
        if v is not None and v not in TRAIN_DATASETS:
            raise ValueError(f"dataset must be one of {', '.join(TRAIN_DATASETS)}, not {v!r}")
        return v


class Recipe(BaseModel):
    """The fully resolved recipe of one run."""

    model_config = ConfigDict(extra="forbid")

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
