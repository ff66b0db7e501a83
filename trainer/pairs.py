"""Preference pairs from trajectories: IRPO, official M-DPO, ScPO (majority vote), SRPO (revision
pairs) and user feedback.

Each builder is a function ``list[Trajectory] -> PairSet`` (weighted pairs plus how many
problems, trajectories and pairs each filter removed). Common steps:

- trajectories are grouped by problem (``problem_id``, else the problem text);
- evaluation trajectories (``source="eval"``) are never trained on (held-out leakage);
- chat turns with context (a client's system prompt, earlier turns) are never trained on: their
  prompt is not their problem's (``Trajectory.standalone``); nor are self-revisions (their prompt
  shows an earlier attempt), except by :func:`srpo_pairs`, which pairs them with what they revised;
- trajectories that cannot be trained on (no prompt first, no model token) are dropped;
- identical responses (same token ids after the prompt) are deduplicated within a problem.

Details follow docs/algorithms.md; where that document reconstructs a detail, so do we.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable
from enum import StrEnum

from pydantic import BaseModel, Field

from agent.trajectory import EpisodeEnd, Feedback, Mode, Source, Trajectory
from sandbox.result import ExecStatus
from trainer.examples import Example, example_from_trajectory, segments_check


class Scheme(StrEnum):
    irpo = "irpo"
    mdpo = "mdpo"
    scpo = "scpo"
    srpo = "srpo"
    feedback = "feedback"


class Pair(BaseModel):
    """One weighted preference pair, self-contained for training (token ids and masks)."""

    problem_key: str
    problem: str
    mode: Mode
    scheme: Scheme
    weight: float = Field(1.0, description="multiplies every term of the pair's loss (ScPO: vote margin)")
    chosen: Example
    rejected: Example
    chosen_text: str = Field("", description="chosen response text (SRPO shows it in the revision prompt)")
    rejected_text: str = ""
    max_turns: int | None = Field(None, description="the tool-call limit the agent's prompt states, for SRPO's "
                                  "revision prompts to read as they do at inference; None: the agent's default")


class PairSet(BaseModel):
    pairs: list[Pair]
    counts: dict[str, int] = Field(description="problems / trajectories / pairs removed by each filter, and kept")


def problem_key(traj: Trajectory) -> str:
    return traj.problem_id or traj.problem.strip()


class _Candidate:
    __slots__ = ("example", "traj")

    def __init__(self, traj: Trajectory, example: Example) -> None:
        self.traj = traj
        self.example = example


def _group(
    trajectories: Iterable[Trajectory], counts: Counter[str], *, include_eval: bool = False
) -> dict[str, list[_Candidate]]:
    """Group usable trajectories by problem; dedupe identical responses (first kept)."""
    groups: dict[str, list[_Candidate]] = {}
    seen: dict[str, set[tuple[int, ...]]] = {}
    for traj in trajectories:
        counts["trajectories_in"] += 1
        if traj.source is Source.eval and not include_eval:
            counts["dropped_eval_trajectory"] += 1
            continue
        if not traj.standalone:  # a chat turn with context: its prompt is not the problem's (agent/conversation.py)
            counts["dropped_conversation"] += 1
            continue
        if traj.parent_id is not None:  # a self-revision: its prompt is the revision prompt (srpo_pairs uses them)
            counts["dropped_revision"] += 1
            continue
        if segments_check(traj) is not None:
            counts["dropped_untrainable"] += 1
            continue
        ex = example_from_trajectory(traj)
        key = problem_key(traj)
        response = tuple(ex.input_ids[ex.prompt_len :])
        if response in seen.setdefault(key, set()):
            counts["dropped_duplicate_response"] += 1
            continue
        seen[key].add(response)
        groups.setdefault(key, []).append(_Candidate(traj, ex))
    counts["problems_in"] = len(groups)
    return groups


def _pair(c: _Candidate, r: _Candidate, scheme: Scheme, weight: float = 1.0, max_turns: int | None = None) -> Pair:
    return Pair(
        max_turns=max_turns,
        problem_key=problem_key(c.traj),
        problem=c.traj.problem,
        mode=c.traj.mode,
        scheme=scheme,
        weight=weight,
        chosen=c.example,
        rejected=r.example,
        chosen_text=c.traj.response_text(),
        rejected_text=r.traj.response_text(),
    )


def _fits(pair: Pair, max_length: int | None) -> bool:
    return max_length is None or (len(pair.chosen) <= max_length and len(pair.rejected) <= max_length)


def _finish(pairs: list[Pair], counts: Counter[str]) -> PairSet:
    counts["pairs"] = len(pairs)
    counts["problems_with_pairs"] = len({p.problem_key for p in pairs})
    return PairSet(pairs=pairs, counts=dict(counts))


def cycle_pairs(winners: list[_Candidate], losers: list[_Candidate], k: int) -> list[tuple[_Candidate, _Candidate]]:
    """IRPO: K pairs by walking both sets together, each restarting from its first element when it runs out."""
    return [(winners[i % len(winners)], losers[i % len(losers)]) for i in range(k)]


def irpo_pairs(
    trajectories: Iterable[Trajectory],
    *,
    k: int = 10,
    gold: dict[str, Trajectory] | None = None,
    max_length: int | None = None,
) -> PairSet:
    """IRPO (Pang et al. 2024): winners = correct, losers = incorrect; the gold solution (keyed
    by :func:`problem_key`) is appended to the winners; problems without a loser (or without
    any winner) are dropped; K pairs per problem by cycling; pairs with a sequence longer than
    ``max_length`` are dropped (the paper drops overflowing pairs, it does not truncate)."""
    counts: Counter[str] = Counter()
    gold = gold or {}
    groups = _group(trajectories, counts)
    for key, g in gold.items():  # a problem seen only through its gold solution has no loser anyway
        if key in groups and segments_check(g) is None:
            groups[key].append(_Candidate(g, example_from_trajectory(g)))
            counts["gold_added"] += 1
    pairs: list[Pair] = []
    for cands in groups.values():
        winners = [c for c in cands if c.traj.correct is True]
        losers = [c for c in cands if c.traj.correct is False]
        counts["dropped_ungraded_trajectory"] += sum(c.traj.correct is None for c in cands)
        if not losers:
            counts["dropped_problem_no_loser"] += 1
            continue
        if not winners:
            counts["dropped_problem_no_winner"] += 1
            continue
        for w, lo in cycle_pairs(winners, losers, k):
            p = _pair(w, lo, Scheme.irpo)
            if _fits(p, max_length):
                pairs.append(p)
            else:
                counts["dropped_pair_too_long"] += 1
    return _finish(pairs, counts)


def mdpo_filter(traj: Trajectory, max_length: int | None) -> str | None:
    """The official M-DPO data filters; the name of the first that rejects ``traj``, or None."""
    if traj.n_tool_calls == 0:
        return "no_tool_call"
    if traj.finish_reason is EpisodeEnd.turn_limit:
        return "turn_limit"
    if traj.calls and traj.calls[-1].result.status is not ExecStatus.ok:
        return "final_turn_interpreter_error"
    if max_length is not None and len(traj.token_ids()) > max_length:
        return "too_long"
    return None


def mdpo_pairs(
    trajectories: Iterable[Trajectory], *, max_length: int | None = None, seed: int = 0
) -> PairSet:
    """M-DPO (Xiong et al. 2024, official recipe): after the filters, one random correct and
    one random incorrect trajectory per problem."""
    counts: Counter[str] = Counter()
    rng = random.Random(seed)
    pairs: list[Pair] = []
    for cands in _group(trajectories, counts).values():
        kept = []
        for c in cands:
            why = mdpo_filter(c.traj, max_length)
            if why is None:
                kept.append(c)
            else:
                counts[f"dropped_{why}"] += 1
        winners = [c for c in kept if c.traj.correct is True]
        losers = [c for c in kept if c.traj.correct is False]
        if not winners or not losers:
            counts["dropped_problem_no_winner" if not winners else "dropped_problem_no_loser"] += 1
            continue
        pairs.append(_pair(rng.choice(winners), rng.choice(losers), Scheme.mdpo))
    return _finish(pairs, counts)


def scpo_pairs(
    trajectories: Iterable[Trajectory],
    *,
    tau: float = 0.5,
    max_length: int | None = None,
) -> PairSet:
    """ScPO (Prasad et al. 2024). Unlabelled problems (no trajectory graded): vote over the
    extracted answers of the k samples (abstentions count in k); chosen = the first response
    with the most-voted answer, rejected = the first with the least-voted other answer; kept
    only if the top share ``V(y+)/k >= tau``; weight ``(V(y+) - V(y-)) / k``. Labelled problems
    keep one gold-answer pair (first correct, first incorrect) with weight 1."""
    from agent.grading import vote_key

    counts: Counter[str] = Counter()
    pairs: list[Pair] = []
    for cands in _group(trajectories, counts).values():
        if any(c.traj.correct is not None for c in cands):
            winners = [c for c in cands if c.traj.correct is True]
            losers = [c for c in cands if c.traj.correct is False]
            if not winners or not losers:
                counts["dropped_problem_labelled_one_sided"] += 1
                continue
            p = _pair(winners[0], losers[0], Scheme.scpo, 1.0)
        else:
            k = len(cands)
            votes: dict[str, list[_Candidate]] = {}
            for c in cands:
                if c.traj.answer is not None and c.traj.answer.strip():
                    votes.setdefault(vote_key(c.traj.answer, c.traj.mode), []).append(c)
            if len(votes) < 2:
                counts["dropped_problem_unanimous_or_no_answer"] += 1
                continue
            order = list(votes)  # first-seen order breaks ties
            top = max(order, key=lambda a: (len(votes[a]), -order.index(a)))
            low = min(order, key=lambda a: (len(votes[a]), order.index(a)))
            share = len(votes[top]) / k
            if share < tau:
                counts["dropped_problem_below_threshold"] += 1
                continue
            p = _pair(votes[top][0], votes[low][0], Scheme.scpo, (len(votes[top]) - len(votes[low])) / k)
        if _fits(p, max_length):
            pairs.append(p)
        else:
            counts["dropped_pair_too_long"] += 1
    return _finish(pairs, counts)


def srpo_pairs(
    trajectories: Iterable[Trajectory],
    *,
    k: int = 10,
    gold: dict[str, Trajectory] | None = None,
    max_length: int | None = None,
    max_turns: int | None = None,
) -> PairSet:
    """SRPO (Choi et al. 2024) revision pairs: (w, l) where w is what the self-improvement policy
    should write when shown the losing attempt l (and, the loss's second term, when shown w
    itself). The loss (``srpo`` in :mod:`trainer.items`) renders the revision prompts from the
    pair's response texts; here each loser of a problem is matched with the winner it is revised
    into, at most ``k`` pairs per problem:

    1. observed revisions first: a trajectory that revises an incorrect one (``parent_id``) and is
       correct is a losing trajectory revised into a winning one; its response is re-prompted
       with the problem's own prompt (w|x), since the revision prompts are rendered for the loss;
    2. then every other incorrect sample, revised into the problem's correct samples and its gold
       solution (``gold``, keyed by :func:`problem_key`), cycled like IRPO's winners.

    Other revision trajectories (a revision of a correct attempt, or one still wrong) are not
    used: their prompt is a revision prompt, not the problem's. A loser with an empty response is
    dropped (nothing to revise). ``max_turns`` is stored on each pair for its revision prompts.
    """
    counts: Counter[str] = Counter()
    trajs = list(trajectories)
    by_id = {t.id: t for t in trajs}
    observed: dict[str, list[Pair]] = {}
    for t in trajs:
        if t.parent_id is None:
            continue
        counts["revision_trajectories"] += 1
        parent = by_id.get(t.parent_id)
        if parent is None:
            counts["dropped_revision_parent_missing"] += 1
            continue
        if not (parent.correct is False and t.correct is True):
            counts["dropped_revision_not_loser_to_winner"] += 1
            continue
        if Source.eval in (t.source, parent.source) or not (t.standalone and parent.standalone):
            counts["dropped_revision_eval_or_conversation"] += 1
            continue
        if segments_check(t) is not None or segments_check(parent) is not None:
            counts["dropped_untrainable"] += 1
            continue
        loser = example_from_trajectory(parent)
        winner = example_from_trajectory(t).with_prompt(loser.input_ids[: loser.prompt_len])
        observed.setdefault(problem_key(parent), []).append(Pair(
            problem_key=problem_key(parent), problem=parent.problem, mode=parent.mode, scheme=Scheme.srpo,
            chosen=winner, rejected=loser, chosen_text=t.response_text(), rejected_text=parent.response_text(), max_turns=max_turns,
        ))
    groups = _group((t for t in trajs if t.parent_id is None), counts)
    for key, g in (gold or {}).items():
        if key in groups and segments_check(g) is None:
            groups[key].append(_Candidate(g, example_from_trajectory(g)))
            counts["gold_added"] += 1
    pairs: list[Pair] = []
    for key in dict.fromkeys([*observed, *groups]):
        chosen = observed.get(key, [])[:k]
        counts["observed_revision_pairs"] += len(chosen)
        revised = {p.rejected.trajectory_id for p in chosen}
        cands = groups.get(key, [])
        winners = [c for c in cands if c.traj.correct is True]
        losers = []
        for c in cands:
            if c.traj.correct is not False or c.traj.id in revised:
                continue
            if not c.traj.response_text().strip():
                counts["dropped_loser_empty_response"] += 1
                continue
            losers.append(c)
        if losers and not winners:  # nothing correct to revise them into (and no gold solution)
            counts["dropped_loser_no_winner"] += len(losers)
            losers = []
        for i, lo in enumerate(losers[: max(0, k - len(chosen))]):
            chosen.append(_pair(winners[i % len(winners)], lo, Scheme.srpo, max_turns=max_turns))
        if not chosen:
            counts["dropped_problem_no_revision_pair"] += 1
        for p in chosen:
            if _fits(p, max_length):
                pairs.append(p)
            else:
                counts["dropped_pair_too_long"] += 1
    return _finish(pairs, counts)


def feedback_pairs(
    trajectories: Iterable[Trajectory], *, k: int = 10, max_length: int | None = None
) -> PairSet:
    """Thumbs-up vs thumbs-down trajectories of the same problem, cycled like IRPO up to
    ``min(k, max(#up, #down))`` pairs per problem (every trajectory used at least once)."""
    counts: Counter[str] = Counter()
    pairs: list[Pair] = []
    for cands in _group(trajectories, counts).values():
        up = [c for c in cands if c.traj.feedback is Feedback.up]
        down = [c for c in cands if c.traj.feedback is Feedback.down]
        if not up or not down:
            counts["dropped_problem_one_sided_feedback"] += 1
            continue
        for w, lo in cycle_pairs(up, down, min(k, max(len(up), len(down)))):
            p = _pair(w, lo, Scheme.feedback)
            if _fits(p, max_length):
                pairs.append(p)
            else:
                counts["dropped_pair_too_long"] += 1
    return _finish(pairs, counts)
