"""Pair builders on hand-made trajectory sets, with the expected pairs written out."""

from __future__ import annotations

import pytest

from agent.trajectory import EpisodeEnd, Feedback, Mode, Source
from sandbox.result import ExecStatus
from trainer.gold import gold_trajectory, gsm8k_solution
from trainer.pairs import feedback_pairs, irpo_pairs, mdpo_pairs, scpo_pairs

P = [1, 2, 3]  # prompt ids shared by the problem's samples


@pytest.fixture(autouse=True)
def _builder(make_traj):
    global _mk
    _mk = make_traj


def t(resp: int, *, correct=None, answer=None, pid="q1", **kw):
    """A trajectory whose response is identified by one token id ``resp``."""
    return _mk(pid, [("p", P), ("m", [resp, 2])], correct=correct, answer=answer, problem_id=pid, **kw)


def ids(pairs):
    return [(p.chosen.input_ids[3], p.rejected.input_ids[3]) for p in pairs]


def test_irpo_cycles_both_sets_and_restarts_each_when_it_runs_out():
    trajs = [t(10, correct=True), t(11, correct=True), t(20, correct=False), t(21, correct=False), t(22, correct=False)]
    ps = irpo_pairs(trajs, k=7)
    assert ids(ps.pairs) == [(10, 20), (11, 21), (10, 22), (11, 20), (10, 21), (11, 22), (10, 20)]
    assert all(p.weight == 1.0 for p in ps.pairs)
    assert ps.counts["pairs"] == 7


def test_irpo_adds_gold_to_winners_and_drops_problems_without_loser(tokenizer):
    gold = gold_trajectory(tokenizer, prompt_ids=P, problem="q2", problem_id="q2", solution="2+2=4\nFinal answer: 4", gold="4")
    trajs = [
        t(10, correct=True), t(20, correct=False),  # q1: ordinary
        t(30, correct=False, pid="q2"), t(31, correct=False, pid="q2"),  # q2: no winner but gold exists
        t(40, correct=True, pid="q3"), t(41, correct=True, pid="q3"),  # q3: no loser -> dropped
        t(50, correct=None, pid="q4"),  # ungraded
    ]
    ps = irpo_pairs(trajs, k=3, gold={"q2": gold})
    by = {}
    for p in ps.pairs:
        by.setdefault(p.problem_key, []).append(p)
    assert ids(by["q1"]) == [(10, 20)] * 3
    gold_resp = gold.token_ids()[3:]
    assert [p.chosen.input_ids[3:] for p in by["q2"]] == [gold_resp] * 3
    assert [p.rejected.input_ids[3] for p in by["q2"]] == [30, 31, 30]
    assert gold_resp[-1] == tokenizer.eos_token_id  # the gold turn ends with the end-of-turn token, a model token
    assert by["q2"][0].chosen.loss_mask == [0, 0, 0] + [1] * len(gold_resp)
    assert "q3" not in by
    assert ps.counts["dropped_problem_no_loser"] == 2  # q3, and q4 (ungraded only)
    assert ps.counts["gold_added"] == 1


def test_irpo_length_filter_and_dedup_and_eval_exclusion(make_traj):
    long_loser = make_traj("q1", [("p", P), ("m", [25] * 20)], correct=False, problem_id="q1")
    trajs = [
        t(10, correct=True), t(10, correct=True),  # identical response: deduplicated
        t(20, correct=False), long_loser,
        t(21, correct=False, source=Source.eval),  # held-out evaluation: never trained on
    ]
    ps = irpo_pairs(trajs, k=4, max_length=10)
    assert ids(ps.pairs) == [(10, 20), (10, 20)]  # (10, long) x2 dropped as too long
    assert ps.counts["dropped_duplicate_response"] == 1
    assert ps.counts["dropped_pair_too_long"] == 2
    assert ps.counts["dropped_eval_trajectory"] == 1


def test_mdpo_filters_and_one_random_pair_per_problem():
    ok = [ExecStatus.ok]
    trajs = [
        t(10, correct=True, calls=ok),
        t(11, correct=True, calls=[]),  # no tool call
        t(12, correct=True, calls=ok, finish=EpisodeEnd.turn_limit),  # turn limit hit
        t(20, correct=False, calls=[ExecStatus.ok, ExecStatus.error]),  # error in the final turn
        t(21, correct=False, calls=[ExecStatus.error, ExecStatus.ok]),  # earlier error is fine
        t(30, correct=True, calls=ok, pid="q2"), t(31, correct=True, calls=ok, pid="q2"),
        t(40, correct=False, calls=ok, pid="q2"), t(41, correct=False, calls=ok, pid="q2"),
    ]
    ps = mdpo_pairs(trajs, seed=0)
    c = ps.counts
    assert (c["dropped_no_tool_call"], c["dropped_turn_limit"], c["dropped_final_turn_interpreter_error"]) == (1, 1, 1)
    by = {p.problem_key: (p.chosen.input_ids[3], p.rejected.input_ids[3]) for p in ps.pairs}
    assert by["q1"] == (10, 21)
    assert by["q2"][0] in (30, 31) and by["q2"][1] in (40, 41)
    assert len(ps.pairs) == 2
    seen = {(p.chosen.input_ids[3], p.rejected.input_ids[3]) for s in range(20) for p in mdpo_pairs(trajs, seed=s).pairs if p.problem_key == "q2"}
    assert len(seen) > 1  # the choice is random (seeded), not always the first


def test_scpo_vote_threshold_and_margin_weights():
    def u(resp, answer, pid):
        return t(resp, answer=answer, pid=pid)

    trajs = [
        # q1: 5 samples, answers 7,7,7,3,(none) -> top share 3/5 >= 0.5; least-voted other = 3
        u(10, "7", "q1"), u(11, "7.0", "q1"), u(12, "7", "q1"), u(13, "3", "q1"), u(14, None, "q1"),
        # q2: 4 samples 1,2,3,3 -> top share 2/4 = 0.5 kept; least-voted: 1 (first seen of the 1-vote answers)
        u(20, "1", "q2"), u(21, "2", "q2"), u(22, "3", "q2"), u(23, "3", "q2"),
        # q3: 4 samples 1,2,3,4 -> top share 0.25 < 0.5 dropped
        u(30, "1", "q3"), u(31, "2", "q3"), u(32, "3", "q3"), u(33, "4", "q3"),
        # q4: unanimous -> no rejected
        u(40, "5", "q4"), u(41, "5", "q4"),
        # q5: labelled -> gold pair, weight 1
        t(50, correct=False, answer="8", pid="q5"), t(51, correct=True, answer="9", pid="q5"),
    ]
    ps = scpo_pairs(trajs, tau=0.5)
    by = {p.problem_key: p for p in ps.pairs}
    assert set(by) == {"q1", "q2", "q5"}
    assert (by["q1"].chosen.input_ids[3], by["q1"].rejected.input_ids[3]) == (10, 13)
    assert by["q1"].weight == pytest.approx((3 - 1) / 5)
    assert (by["q2"].chosen.input_ids[3], by["q2"].rejected.input_ids[3]) == (22, 20)
    assert by["q2"].weight == pytest.approx((2 - 1) / 4)
    assert (by["q5"].chosen.input_ids[3], by["q5"].rejected.input_ids[3], by["q5"].weight) == (51, 50, 1.0)
    assert ps.counts["dropped_problem_below_threshold"] == 1
    assert ps.counts["dropped_problem_unanimous_or_no_answer"] == 1
    assert len(scpo_pairs(trajs, tau=0.6).pairs) == 2  # q2 (0.5) now below threshold


def test_feedback_pairs_up_vs_down_of_the_same_problem():
    trajs = [
        t(10, feedback=Feedback.up), t(20, feedback=Feedback.down), t(21, feedback=Feedback.down), t(30),
        t(40, feedback=Feedback.up, pid="q2"),  # no thumbs-down: dropped
    ]
    ps = feedback_pairs(trajs)
    assert ids(ps.pairs) == [(10, 20), (10, 21)]
    assert ps.counts["dropped_problem_one_sided_feedback"] == 1


def test_gold_rendering_tool_mode_masks_the_output(tokenizer):
    body, answer = gsm8k_solution("He has 3*4=<<3*4=12>>12 eggs.\n#### 1,200", Mode.tir)
    assert answer == "1200" and "<<" not in body and body.endswith("\\boxed{1200}.")
    g = gold_trajectory(
        tokenizer, prompt_ids=P, problem="q", solution="Multiply.", gold="12", mode=Mode.tir,
        code="print(3*4)", code_output="12",
    )
    kinds = [s.kind.value for s in g.segments]
    assert kinds == ["prompt", "model", "observation", "model"]
    assert g.source is Source.gold and g.correct is True
    assert g.segments[2].text == "```output\n12\n```\n"
    mask = g.model_mask()
    n_obs = len(g.segments[2].token_ids)
    start = len(P) + len(g.segments[1].token_ids)
    assert mask[start : start + n_obs] == [0] * n_obs
    assert tokenizer.decode(g.segments[1].token_ids) == "Multiply.\n```python\nprint(3*4)\n```\n"


def test_chat_turns_with_context_are_not_trained_on() -> None:
    """A follow-up ("now double it") logged with its context is no problem by itself: no pairs."""
    from agent.trajectory import Segment, SegmentKind, Source, Trajectory
    from trainer.pairs import irpo_pairs

    def traj(answer: str, correct: bool, context: int) -> Trajectory:
        return Trajectory(problem="Now double it.", gold="782", answer=answer, correct=correct, source=Source.api,
                          context_messages=context,
                          segments=[Segment(kind=SegmentKind.prompt, text="p", token_ids=[1, 2]),
                                    Segment(kind=SegmentKind.model, text=answer, token_ids=[3, int(answer)])])

    kept = irpo_pairs([traj("782", True, 0), traj("391", False, 0)], k=1)
    assert len(kept.pairs) == 1
    dropped = irpo_pairs([traj("782", True, 2), traj("391", False, 2)], k=1)
    assert dropped.pairs == [] and dropped.counts["dropped_conversation"] == 2
