"""The iteration driver: one retrain run of T iterations, every step idempotent and resumable.

Per iteration (docs/algorithms.md, IRPO with the agent's multi-turn trajectories):

1. base      the current version: the registry's active one (the configured base model is
             imported as the first version when the registry is empty), or the previous
             iteration's promoted version; its lineage depth picks the rollout temperature.
2. prompts   the training set (gold answers) + logged user trajectories with or without labels;
             the held-out problems of the gate.
3. rollouts  N samples per prompt from the current version through the agent loop and sandbox;
             on a vLLM stack through the serving vLLM (:mod:`trainer.engines` says which engine
             each step uses and why; the job's progress names it).
4. pairs     IRPO on labelled prompts (gold solutions join the winners), ScPO on unlabelled ones.
5. train     DPO + NLL in a subprocess under ``accelerate launch``; reference = the current version.
6. eval      candidate and current, greedy, on the same held-out problems (on vLLM: the current
             version as served, a LoRA candidate as a private adapter): promote only if a
             paired non-inferiority test at margin ``tolerance`` says the candidate is not worse
             (:mod:`trainer.gate`); otherwise the run stops, rejected, with the test's numbers
             recorded, and nothing is published.
7. publish   an immutable registry version (manifest: training config, eval results, golden prompts).
8. deploy    through the gateway (``POST /admin/deploy``) or, without one, the registry pointer.

Every step's outputs go to the run directory and the step is recorded as done in its state file
(:mod:`trainer.runstate`) only after they are durable: killing the process anywhere and running
the same run again continues from the last finished step. The active version changes only in
step 8; a half-written version never appears (the registry publishes by rename, and stale
staging directories are removed at start).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, Field

from agent.datasets import Problem
from agent.evaluate import EvalReport, ProblemOutcome
from agent.runtime import Resources
from trainer.collect import IterPrompt, dataset_split, from_problem, logged_prompts
from trainer.engines import StepEngines, unavailable
from trainer.gate import GateResult, decide, evaluate_engine, golden_prompts
from trainer.progress import Phase, Progress, ProgressFn, ignore_progress
from trainer.recipe import Recipe
from trainer.registry import GoldenPrompt, Registry
from trainer.runstate import RunDir, write_json_durable
from trainer.save import ADAPTER_DIR, merge_adapter
from trainer.settings import TrainerSettings

log = logging.getLogger(__name__)
_M = TypeVar("_M", bound=BaseModel)

# files of a training output directory that are not part of the published checkpoint
TRAIN_ONLY = {"state", "curves.jsonl", "reference_logps.json", "train_result.json"}


CRASH_ENV = "MATHAGENT_TRAINER_CRASH_AT"


def crash_point(name: str) -> None:
    """Fault injection for the crash tests: SIGKILL this process at the named point when
    ``MATHAGENT_TRAINER_CRASH_AT`` names it (points: ``publish:staged``, ``publish:done``)."""
    if os.environ.get(CRASH_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


class IterationOutcome(BaseModel):
    iteration: int
    lineage_iteration: int
    base_version: str
    temperature: float
    status: Literal["promoted", "rejected", "no_pairs"]
    prompts: int = 0
    labelled_prompts: int = 0
    pairs: int = 0
    train_steps: int | None = None
    loss_first: float | None = None
    loss_last: float | None = None
    gate: GateResult | None = None
    version: str | None = Field(None, description="the published (and deployed) version when promoted")
    seconds: dict[str, float] = Field(default_factory=dict, description="wall time of each step (its last run)")


class RunOutcome(BaseModel):
    run_id: str
    status: Literal["succeeded", "rejected", "no_pairs"]
    iterations: list[IterationOutcome]
    active_before: str | None
    active_after: str | None


class _Reporter:
    def __init__(self, fn: ProgressFn, iterations: int) -> None:
        self.fn = fn
        self.now = Progress(iterations=iterations)

    async def set(self, **fields: Any) -> None:
        if fields.get("phase") not in (None, Phase.rollouts, Phase.eval):
            fields.setdefault("engine", None)  # only the generating phases have one
        self.now = self.now.model_copy(update=fields)
        await self.fn(self.now)


def ensure_base(registry: Registry, settings: TrainerSettings) -> str:
    """The current version: the active one; with none active (an empty registry, or a gateway
    rolled back to its configured model), the configured model imported as a registry version
    (parent None, once: an earlier import is reused), so a later rollback can return to it.
    The import is named by the model's content id, the version a gateway serving MATHAGENT_MODEL
    reports, so the base model has one identity everywhere (answers, /admin/versions, the
    registry). The pointer is not touched: the active version changes only when a candidate is
    deployed."""
    from agent.modelstore import resolve

    active = registry.active()
    if active is not None:
        return active
    resolved = resolve(settings.model, settings.state_dir)
    for m in registry.manifests():
        if m.version == resolved.version or (m.training_config.get("imported_from") == settings.model
                                             and m.parent is None):
            return m.version
    manifest = registry.publish(
        resolved.path, base_model=settings.model, parent=None, kind="full", version=resolved.version,
        training_config={"imported_from": settings.model, "lineage_iteration": 0, "content_id": resolved.version},
    )
    return manifest.version


def _current_adapter(base: dict[str, Any]) -> dict[str, Any]:
    """The current version's LoRA adapter and the version it was trained on, when it is one
    (recorded by ``step_base``): what vLLM loads for it."""
    adapter = base.get("adapter")
    return {"adapter": Path(adapter) if adapter else None, "adapter_base": base.get("adapter_base")}


def _write_jsonl(path: Path, rows: list[BaseModel]) -> None:
    write_json_durable(path, "".join(r.model_dump_json() + "\n" for r in rows))


def _read_jsonl(path: Path, cls: type[_M]) -> list[_M]:
    return [cls.model_validate_json(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def candidate_dir(train_out: Path, dest: Path) -> Path:
    """The checkpoint files of a training output (hard links where possible), nothing else."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for p in train_out.iterdir():
        if p.name in TRAIN_ONLY or not p.is_file():
            continue
        try:
            os.link(p, dest / p.name)
        except OSError:
            shutil.copy2(p, dest / p.name)
    return dest


class Driver:
    """Runs one retrain run; see the module docstring."""

    def __init__(self, settings: TrainerSettings, recipe: Recipe, run_dir: Path, *, run_id: str,
                 progress: ProgressFn = ignore_progress) -> None:
        self.settings = settings
        self.recipe = recipe
        self.rd = RunDir(run_dir, run_id, recipe)
        self.run_id = run_id
        self.registry = Registry(settings.registry_path)
        self.rep = _Reporter(progress, recipe.iterations)
        self.resources = Resources(settings)
        self.engines = StepEngines(self.resources, run_id)

    # -- the run --------------------------------------------------------------------------------
    async def run(self) -> RunOutcome:
        if self.rd.state.outcome is not None:
            return RunOutcome.model_validate(self.rd.state.outcome)
        cleaned = self.registry.clean_staging()
        if cleaned:
            log.warning("removed %d half-written version(s) from the registry's staging area", cleaned)
        active_before = self.registry.active()
        await self.engines.unload_leftovers()
        outcomes: list[IterationOutcome] = []
        status: Literal["succeeded", "rejected", "no_pairs"] = "succeeded"
        try:
            for i in range(1, self.recipe.iterations + 1):
                outcome = await self.iteration(i)
                outcomes.append(outcome)
                if outcome.status != "promoted":
                    status = outcome.status
                    break
        finally:
            await self.resources.aclose()
        result = RunOutcome(run_id=self.run_id, status=status, iterations=outcomes, active_before=active_before,
                            active_after=self.registry.active())
        self.rd.finish(result.model_dump(mode="json"))
        await self.rep.set(phase=Phase.done, message=status)
        return result

    async def _step(self, i: int, name: str, fn: Any) -> dict[str, Any]:
        done = self.rd.done(i, name)
        if done is not None:
            return done
        t0 = time.perf_counter()
        out = await fn()
        out["seconds"] = round(time.perf_counter() - t0, 3)
        return self.rd.mark(i, name, out)

    async def iteration(self, i: int) -> IterationOutcome:
        await self.rep.set(iteration=i, phase=Phase.base, done=0, total=0, message="")
        base = await self._step(i, "base", lambda: self.step_base(i))
        head = dict(iteration=i, lineage_iteration=base["lineage_iteration"], base_version=base["version"],
                    temperature=base["temperature"])
        prompts = await self._step(i, "prompts", lambda: self.step_prompts(i))
        rollouts = await self._step(i, "rollouts", lambda: self.step_rollouts(i, base))
        pairs = await self._step(i, "pairs", lambda: self.step_pairs(i, base))
        seconds = {k: v["seconds"] for k, v in (("base", base), ("prompts", prompts), ("rollouts", rollouts),
                                                ("pairs", pairs))}
        counts = dict(prompts=prompts["n"], labelled_prompts=prompts["labelled"], pairs=pairs["n"])
        if pairs["n"] == 0:
            return IterationOutcome(**head, status="no_pairs", seconds=seconds, **counts)
        train = await self._step(i, "train", lambda: self.step_train(i, base, pairs["n"]))
        gate_out = await self._step(i, "eval", lambda: self.step_eval(i, base))
        gate = GateResult.model_validate(gate_out["gate"])
        seconds |= {"train": train["seconds"], "eval": gate_out["seconds"]}
        common = dict(**head, **counts, train_steps=train["steps"], loss_first=train["first_loss"],
                      loss_last=train["last_loss"], gate=gate)
        if not gate.promoted:
            await self.rep.set(phase=Phase.eval, message=gate.reason)
            return IterationOutcome(**common, status="rejected", seconds=seconds)
        published = await self._step(i, "publish", lambda: self.step_publish(i, base, train, gate_out, pairs))
        deployed = await self._step(i, "deploy", lambda: self.step_deploy(i, published["version"]))
        seconds |= {"publish": published["seconds"], "deploy": deployed["seconds"]}
        return IterationOutcome(**common, status="promoted", version=published["version"], seconds=seconds)

    # -- steps ----------------------------------------------------------------------------------
    async def step_base(self, i: int) -> dict[str, Any]:
        if i == 1:
            version = await asyncio.to_thread(ensure_base, self.registry, self.settings)
        else:
            prev = self.rd.done(i - 1, "publish")
            if prev is None:
                raise RuntimeError(f"iteration {i} has no base: iteration {i - 1} published nothing")
            version = prev["version"]
        manifest = self.registry.manifest(version)
        lineage = int(manifest.training_config.get("lineage_iteration", 0)) + 1
        path = self.registry.path(version)
        adapter: dict[str, str] = {}
        if manifest.kind == "lora":
            adapter = {"adapter": str(path), "adapter_base": manifest.base_model}  # what vLLM loads
            from agent.modelstore import resolve

            # rollouts, training and the gate need a whole checkpoint: the adapter merged into
            # the weights it was trained on (made once per version, kept in the state dir)
            base_dir = self.registry.path(manifest.base_model)
            if not base_dir.is_dir():
                base_dir = resolve(manifest.base_model, self.settings.state_dir, allow_download=False).path
            path = await asyncio.to_thread(merge_adapter, path, base_dir, self.settings.state_dir / "merged" / version)
        return {"version": version, "path": str(path), "kind": manifest.kind, "lineage_iteration": lineage,
                "temperature": self.recipe.temperature(lineage), **adapter}

    async def step_prompts(self, i: int) -> dict[str, Any]:
        await self.rep.set(phase=Phase.prompts)
        split = await asyncio.to_thread(dataset_split, self.recipe)
        prompts = [from_problem(p) for p in split.train]
        note = ""
        if self.recipe.use_logged and self.recipe.log_prompt_limit > 0:
            exclude = {p.problem.strip() for p in split.heldout} | {p.problem.strip() for p in prompts}
            try:
                prompts += await logged_prompts(self.settings.redis_url, self.settings.spool_dir,
                                                self.settings.redis_prefix, limit=self.recipe.log_prompt_limit,
                                                exclude=exclude)
            except (OSError, ConnectionError) as exc:
                note = f"logged trajectories not read ({type(exc).__name__}: {exc})"
            except Exception as exc:
                if not type(exc).__module__.startswith("redis"):
                    raise
                note = f"logged trajectories not read ({type(exc).__name__}: {exc})"
            if note:
                log.warning("%s", note)
        d = self.rd.iter_dir(i)
        _write_jsonl(d / "prompts.jsonl", list(prompts))
        _write_jsonl(d / "heldout.jsonl", list(split.heldout))
        return {"n": len(prompts), "labelled": sum(p.gold is not None for p in prompts),
                "from_log": sum(p.origin == "log" for p in prompts), "heldout": len(split.heldout), "note": note}

    async def step_rollouts(self, i: int, base: dict[str, Any]) -> dict[str, Any]:
        from agent.engines.base import EngineUnavailableError
        from agent.modelstore import load_tokenizer
        from agent.solver import Solver
        from trainer.rollouts import run_rollouts

        d = self.rd.iter_dir(i)
        prompts = _read_jsonl(d / "prompts.jsonl", IterPrompt)
        await self.rep.set(phase=Phase.rollouts, done=0, total=len(prompts), engine=None)
        sandbox = await self.resources.sandbox()
        try:
            current = self.engines.open(base["version"], Path(base["path"]), **_current_adapter(base))
            async with current as (engine, choice):
                await self.rep.set(engine=choice.describe())
                tokenizer = await asyncio.to_thread(load_tokenizer, Path(base["path"]))
                solver = Solver(engine, sandbox, None, self.resources.solver_settings())

                async def on_done(done: int, total: int) -> None:
                    await self.rep.set(done=done, total=total)

                records = await run_rollouts(
                    solver, prompts, d / "rollouts.jsonl", samples=self.recipe.samples,
                    temperature=base["temperature"], concurrency=self.recipe.concurrency, seed=self.recipe.seed,
                    iteration=base["lineage_iteration"], tokenizer=tokenizer, on_done=on_done,
                )
        except EngineUnavailableError as exc:
            raise unavailable(exc, self.settings.vllm_url, "rollouts") from exc
        trajs = [t for r in records.values() for t in r.trajectories]
        graded = [t for t in trajs if t.correct is not None]
        return {"prompts": len(records), "trajectories": len(trajs), "engine": choice.describe(),
                "sample_accuracy": (sum(bool(t.correct) for t in graded) / len(graded)) if graded else None,
                "gold_solutions": sum(r.gold is not None for r in records.values())}

    async def step_pairs(self, i: int, base: dict[str, Any]) -> dict[str, Any]:
        from trainer.io import write_pairs
        from trainer.pairs import irpo_pairs, problem_key, scpo_pairs
        from trainer.rollouts import read_rollouts

        await self.rep.set(phase=Phase.pairs, done=0, total=0)
        d = self.rd.iter_dir(i)
        prompts = {p.id: p for p in _read_jsonl(d / "prompts.jsonl", IterPrompt)}
        records = read_rollouts(d / "rollouts.jsonl")
        labelled = [t for pid, r in records.items() if prompts[pid].gold is not None for t in r.trajectories]
        unlabelled = [t for pid, r in records.items() if prompts[pid].gold is None for t in r.trajectories]
        gold = {problem_key(r.gold): r.gold for r in records.values() if r.gold is not None}
        irpo = irpo_pairs(labelled, k=self.recipe.pairs_k, gold=gold, max_length=self.recipe.max_length)
        scpo = scpo_pairs(unlabelled, tau=self.recipe.scpo_tau, max_length=self.recipe.max_length)
        pairs = irpo.pairs + scpo.pairs
        write_pairs(pairs, d / "pairs.jsonl")
        await self.rep.set(done=len(pairs), total=len(pairs))
        return {"n": len(pairs), "irpo": irpo.counts, "scpo": scpo.counts}

    async def step_train(self, i: int, base: dict[str, Any], n_pairs: int) -> dict[str, Any]:
        from trainer.config import TrainConfig
        from trainer.launch import estimate_steps, resumable_step, run_training
        from trainer.train import TrainResult

        d = self.rd.iter_dir(i)
        r = self.recipe
        out = d / "train"
        batch = max(1, min(r.batch_size, n_pairs // r.train_processes))
        config = TrainConfig(
            pairs=d / "pairs.jsonl", out=out, model=base["path"], state_dir=self.settings.state_dir, loss=r.loss,
            beta=r.beta, alpha=r.alpha, lr=r.lr, epochs=r.epochs, max_steps=r.max_steps, per_device_batch_size=batch,
            save_steps=r.save_steps, max_length=r.max_length, seed=r.seed, resume=True, progress=False, lora=r.lora,
        )
        total = estimate_steps(n_pairs, config, r.train_processes)
        resumed_from = resumable_step(out)
        await self.rep.set(phase=Phase.train, done=resumed_from, total=total, step=resumed_from, total_steps=total,
                           message=f"resuming from step {resumed_from}" if resumed_from else "")
        if (out / "train_result.json").is_file():  # finished before a crash, not yet recorded
            result = TrainResult.model_validate_json((out / "train_result.json").read_text())
        else:
            async def on_step(rec: dict[str, Any]) -> None:
                await self.rep.set(done=int(rec["step"]), step=int(rec["step"]), loss=rec.get("loss"),
                                   margin=rec.get("margin"))

            result = await run_training(config, d, processes=r.train_processes,
                                          threads=self.settings.train_threads, on_step=on_step)
        return {"steps": result.steps, "items": result.items, "first_loss": result.first_loss,
                "last_loss": result.last.get("loss"), "last_margin": result.last.get("margin"),
                "train_s": result.train_s, "reference_s": result.reference_s, "resumed_from_step": resumed_from,
                "config": config.model_dump(mode="json")}

    async def _eval(self, path: Path, version: str, heldout: list[Problem], cache: Path, label: str, *,
                    adapter: Path | None = None, adapter_base: str | None = None) -> EvalReport:
        """``label``'s greedy report on ``heldout`` (cached in ``cache``); progress counts problems
        (both versions' in one total) and ``accuracy_<label>`` is its accuracy so far. On vLLM a
        LoRA ``adapter`` over ``adapter_base`` is what is loaded (see :mod:`trainer.engines`)."""
        from agent.engines.base import EngineUnavailableError

        field = f"accuracy_{label}"
        if cache.is_file():
            report = EvalReport.model_validate_json(cache.read_text())
            await self.rep.set(**{field: report.greedy_accuracy})
            return report
        await self.rep.set(phase=Phase.eval, message=f"evaluating {label}", engine=None)
        sandbox = await self.resources.sandbox()
        seen = correct = 0

        def on_outcome(outcome: ProblemOutcome) -> Awaitable[None]:
            # counted now, in finishing order; the snapshot is written by the task the gate awaits
            nonlocal seen, correct
            seen += 1
            correct += int(outcome.greedy_correct)
            self.rep.now = self.rep.now.model_copy(update={"done": self.rep.now.done + 1, field: correct / seen,
                                                           "message": f"evaluating {label}: {seen}/{len(heldout)}"})
            return self.rep.fn(self.rep.now)

        try:
            async with self.engines.open(version, path, adapter=adapter, adapter_base=adapter_base) as (engine, choice):
                await self.rep.set(engine=choice.describe())
                report = await evaluate_engine(engine, sandbox, heldout, dataset=self.recipe.dataset,
                                               settings=self.resources.solver_settings(),
                                               concurrency=self.recipe.concurrency, on_outcome=on_outcome)
                if label == "candidate":
                    golden = await golden_prompts(engine, heldout)
                    write_json_durable(cache.with_name("golden.json"),
                                       "[" + ",".join(g.model_dump_json() for g in golden) + "]")
        except EngineUnavailableError as exc:
            raise unavailable(exc, self.settings.vllm_url, f"the evaluation of the {label} version") from exc
        report = report.model_copy(update={"engine": choice.describe()})
        write_json_durable(cache, report.model_dump_json())
        return report

    async def step_eval(self, i: int, base: dict[str, Any]) -> dict[str, Any]:
        d = self.rd.iter_dir(i)
        heldout = _read_jsonl(d / "heldout.jsonl", Problem)
        # the current version's report: computed by this run already when it was the previous candidate
        current_cache = self.rd.path / "evals" / f"{base['version']}.json"
        prev = self.rd.done(i - 1, "publish") if i > 1 else None
        if prev is not None and prev["version"] == base["version"]:
            current_cache = self.rd.iter_dir(i - 1) / "eval_candidate.json"
        candidate_cache = d / "eval_candidate.json"
        # done/total count held-out problems over both versions still to evaluate (a cached report counts as done)
        total = len(heldout) * 2
        done = len(heldout) * (int(current_cache.is_file()) + int(candidate_cache.is_file()))
        await self.rep.set(phase=Phase.eval, done=done, total=total, accuracy_current=None, accuracy_candidate=None,
                           message="")
        current = await self._eval(Path(base["path"]), base["version"], heldout, current_cache, "current",
                                   **_current_adapter(base))
        lora = self._lora_candidate(i, base)  # evaluated as the adapter it is published as
        candidate = await self._eval(d / "train", f"candidate-{self.run_id}-{i}", heldout, candidate_cache, "candidate",
                                     adapter=lora, adapter_base=base["version"] if lora else None)
        r = self.recipe
        gate = decide(base["version"], current, candidate, r.tolerance, min_problems=r.gate_min_problems,
                      alpha=r.gate_alpha, force=r.force_promote)
        await self.rep.set(phase=Phase.eval, done=total, total=total,
                           accuracy_current=gate.accuracy_current, accuracy_candidate=gate.accuracy_candidate,
                           message=gate.reason)
        return {"gate": gate.model_dump(mode="json"), "engines": {"current": current.engine, "candidate": candidate.engine}}

    def _lora_candidate(self, i: int, base: dict[str, Any]) -> Path | None:
        """Iteration ``i``'s LoRA adapter when the candidate is published (and evaluated on vLLM) as
        that adapter, on the version it was trained from (what vLLM's base slot must hold): a LoRA
        training on the current version's whole weights. An adapter trained on a merged LoRA
        version is published merged, as full weights, since vLLM's slot never holds a merged adapter."""
        adapter = self.rd.iter_dir(i) / "train" / ADAPTER_DIR
        if self.recipe.lora and (adapter / "adapter_config.json").is_file() and base.get("kind") != "lora":
            return adapter
        return None

    async def step_publish(self, i: int, base: dict[str, Any], train: dict[str, Any], gate_out: dict[str, Any],
                           pairs: dict[str, Any]) -> dict[str, Any]:
        from pydantic import TypeAdapter

        await self.rep.set(phase=Phase.publish, done=0, total=1, message="")
        d = self.rd.iter_dir(i)
        it = self.rd.iteration(i)
        planned = it.planned_version
        if planned is not None and self.registry.path(planned).is_dir():
            m = self.registry.manifest(planned)
            if m.training_config.get("run_id") == self.run_id and m.training_config.get("iteration") == i:
                await asyncio.to_thread(self.registry.verify, planned)
                return {"version": planned, "adopted": True}
            planned = None  # the name went to another publisher meanwhile
        if planned is None:
            planned = self.registry.next_version()
            self.rd.plan_version(i, planned)
        golden = TypeAdapter(list[GoldenPrompt]).validate_json((d / "golden.json").read_text())
        adapter = self._lora_candidate(i, base)
        kind: Literal["full", "lora"]
        if adapter is not None:  # the adapter itself, on the version it was trained from
            src, kind, base_model = adapter, "lora", str(base["version"])
        else:
            src = await asyncio.to_thread(candidate_dir, d / "train", d / "candidate")
            kind, base_model = "full", self.settings.model
        manifest = await asyncio.to_thread(
            self.registry.publish, src, version=planned, base_model=base_model, parent=base["version"],
            kind=kind,
            training_config={"run_id": self.run_id, "iteration": i, "lineage_iteration": base["lineage_iteration"],
                             "temperature": base["temperature"], "recipe": self.recipe.model_dump(mode="json"),
                             "train": {k: v for k, v in train.items() if k != "config"}, "train_config": train["config"],
                             "pairs": pairs},
            eval_results={"dataset": self.recipe.dataset, **gate_out["gate"]},
            golden=golden, on_staged=lambda _: crash_point("publish:staged"),
        )
        crash_point("publish:done")
        if kind == "full":
            shutil.rmtree(src, ignore_errors=True)
        await self.rep.set(done=1)
        return {"version": manifest.version, "adopted": False}

    async def step_deploy(self, i: int, version: str) -> dict[str, Any]:
        from trainer.deploy import deploy

        await self.rep.set(phase=Phase.deploy, done=0, total=1, message=f"deploying {version}")
        base = self.rd.done(i, "base") or {}
        result = await deploy(version, registry=self.registry, gateway_url=self.settings.gateway_url,
                              admin_token=self.settings.admin_token.get_secret_value(),
                              previous_if_none=base.get("version"))
        await self.rep.set(done=1, message=f"deployed {version} via {result.via}")
        return result.model_dump()


async def run_iterations(settings: TrainerSettings, recipe: Recipe, run_dir: Path, *, run_id: str,
                         progress: ProgressFn = ignore_progress) -> RunOutcome:
    """Run (or resume) the retrain run in ``run_dir``."""
    return await Driver(settings, recipe, run_dir, run_id=run_id, progress=progress).run()
