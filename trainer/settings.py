"""Settings of the trainer process (``python -m trainer worker``, ``mathagent iterate``): one
pydantic-settings object, env prefix ``MATHAGENT_``.

:class:`ServiceSettings` is what the trainer worker and the gateway share (the version
registry, the job queue, the admin token); it extends :class:`agent.settings.AgentSettings`
because both run the agent itself (engine, sandbox, trajectory log, solver limits).
:class:`TrainerSettings` adds the trainer's own knobs: the retrain recipe defaults (a job
request may override them), the schedule and the gateway to deploy to.
"""

from __future__ import annotations

from pathlib import Path

from arq.constants import default_queue_name, health_check_key_suffix
from pydantic import Field, SecretStr, field_validator

from agent.settings import AgentSettings
from trainer.jobs import jobs_prefix
from trainer.recipe import parse_temperatures


class ServiceSettings(AgentSettings):
    """Settings the gateway and the trainer worker share."""

    registry_dir: Path | None = Field(None, description="the model version registry (default <state_dir>/registry)")
    queue_name: str = Field(default_queue_name, description="arq queue of retrain jobs; its health-check key is "
                            "<queue>:health-check")
    admin_token: SecretStr = Field(SecretStr(""), description="bearer token of the gateway's /admin routes (the "
                                   "trainer sends it with deploys); required by the gateway outside dev mode")

    @field_validator("registry_dir")
    @classmethod
    def _expand_registry(cls, v: Path | None) -> Path | None:
        return v.expanduser() if v is not None else None

    @property
    def registry_path(self) -> Path:
        """The model version registry, shared by the trainer and the gateway."""
        return self.registry_dir or self.state_dir / "registry"

    @property
    def job_prefix(self) -> str:
        return jobs_prefix(self.redis_prefix)

    @property
    def health_check_key(self) -> str:
        """Written by the arq worker while it runs (arq's own key layout)."""
        return self.queue_name + health_check_key_suffix


class TrainerSettings(ServiceSettings):
    """Settings of the trainer worker and of `mathagent iterate`."""

    # -- where things go ------------------------------------------------------------------------
    runs_dir: Path | None = Field(None, description="one directory per retrain run (default <state_dir>/runs)")

    # -- the queue ------------------------------------------------------------------------------
    job_timeout_h: float = Field(48.0, gt=0, description="a retrain job is cancelled after this many hours")
    job_max_tries: int = Field(20, ge=1, description="starts of one job at most (a killed worker resumes it)")
    heartbeat_s: float = Field(5.0, gt=0, description="how often a running job refreshes its heartbeat")
    stale_after_s: float = Field(60.0, gt=0, description="a running job without heartbeat this long is resumed")

    # -- the schedule ---------------------------------------------------------------------------
    retrain_every_h: float = Field(0.0, ge=0, description="enqueue a retrain every X hours (0 = off)")
    retrain_after_labels: int = Field(0, ge=0, description="enqueue a retrain when M new labelled trajectories arrived (0 = off)")

    # -- deploy ---------------------------------------------------------------------------------
    gateway_url: str = Field("", description="deploy through POST <url>/admin/deploy; empty = activate in the registry")

    # -- recipe defaults (a retrain request may override each) ----------------------------------
    retrain_dataset: str = Field("synthetic", description="training set: synthetic, gsm8k or math")
    data_dir: Path | None = Field(None, description="folder with gsm8k/ and math/ JSONL (no download when set)")
    train_limit: int = Field(64, ge=1, description="training prompts from the data set per iteration")
    eval_limit: int = Field(32, ge=1, description="held-out problems of the eval gate")
    log_prompt_limit: int = Field(64, ge=0, description="prompts from logged trajectories per iteration at most")
    samples: int = Field(8, ge=2, description="rollouts per prompt (IRPO: N)")
    temperatures: str = Field("0.8,0.8,1.3", description="rollout temperature per iteration, comma-separated (last repeats)")
    tolerance: float = Field(0.05, ge=-1, le=1, allow_inf_nan=False, description="the eval gate's non-inferiority "
                             "margin: promote when the paired 1 - alpha lower bound of candidate - current held-out "
                             "accuracy is >= -tolerance")
    gate_min_problems: int = Field(20, ge=1, description="the eval gate refuses a candidate measured on fewer held-out "
                                   "problems")
    gate_alpha: float = Field(0.05, gt=0, lt=0.5, allow_inf_nan=False, description="the eval gate's one-sided "
                              "error level (the lower bound is the paired bootstrap's alpha quantile)")
    pairs_k: int = Field(10, ge=1, description="IRPO pairs per problem (K)")
    scpo_tau: float = Field(0.5, ge=0, le=1, description="ScPO: minimum vote share for unlabelled prompts")
    loss: str = Field("dpo+nll", description="training loss")
    lr: float = Field(1e-6, gt=0, description="peak learning rate")
    beta: float = Field(0.1, gt=0, description="DPO beta")
    alpha: float = Field(1.0, ge=0, description="NLL coefficient")
    epochs: int = Field(1, ge=1, description="passes over the pairs")
    max_steps: int | None = Field(None, ge=1, description="optimizer steps at most per iteration")
    batch_size: int = Field(4, ge=1, description="pairs per micro-batch per process")
    save_steps: int = Field(10, ge=0, description="resumable training state every N steps")
    train_processes: int = Field(1, ge=1, description="accelerate launch --num_processes")
    train_threads: int | None = Field(
        None, ge=1, description="CPU threads of each training process (None: the cores divided among the processes)")
    rollout_concurrency: int = Field(8, ge=1, description="prompts in flight during rollouts and eval")

    @field_validator("runs_dir", "data_dir")
    @classmethod
    def _expand_dir(cls, v: Path | None) -> Path | None:
        return v.expanduser() if v is not None else None

    @field_validator("temperatures")
    @classmethod
    def _temps(cls, v: str) -> str:
        parse_temperatures(v)
        return v

    @property
    def runs_path(self) -> Path:
        return self.runs_dir or self.state_dir / "runs"
