"""SRPO revision pairs (trainer/pairs.py ``srpo_pairs``) on hand-written trajectories, and the six
sequences the srpo loss builds from them (trainer/items.py)."""

from __future__ import annotations

import pytest

from agent.trajectory import Segment, SegmentKind, Source
from trainer.gold import gold_trajectory
from trainer.items import build_items, revision_prompt_ids
from trainer.pairs import Scheme, srpo_pairs

P = [1, 2, 3]  # the problem's prompt ids
R = [7, 8, 9, 9]  # a revision prompt's ids (what the agent rendered for a revision episode)


@pytest.fixture(autouse=True)
def _builder(make_traj):
    global _mk
    _mk = make_traj


def t(resp: int, *, correct=None, pid="q1", prompt=P, **kw):
    """A trajectory whose response is identified by one token id ``resp``."""
    return _mk(pid, [("p", prompt), ("m", [resp, 2])], correct=correct, problem_id=pid, **kw)


def ids(pairs):
    """(chosen response token, rejected response token) per pair."""
    return [
        (p.chosen.input_ids[p.chosen.prompt_len], p.rejected.input_ids[p.rejected.prompt_len]) for p in pairs
    ]


def test_each_loser_is_revised_into_a_winner_cycling_the_winners():
    trajs = [
        t(10, correct=True),
        t(11, correct=True),
        t(20, correct=False),
        t(21, correct=False),
        t(22, correct=False),
    ]
    ps = srpo_pairs(trajs, k=10, max_turns=2)
    assert ids(ps.pairs) == [(10, 20), (11, 21), (10, 22)]  # one pair per loser, not k
    p = ps.pairs[0]
    assert p.scheme is Scheme.srpo and p.max_turns == 2
    # the texts the revision prompts show: the attempt as the agent shows it (everything after the prompt)
    assert (p.chosen_text, p.rejected_text) == (trajs[0].response_text(), trajs[2].response_text())
    assert p.chosen.input_ids == [*P, 10, 2] and p.chosen.prompt_len == 3
    assert ids(srpo_pairs(trajs, k=2).pairs) == [(10, 20), (11, 21)]  # at most k per problem
    assert srpo_pairs(trajs).pairs[0].max_turns is None


def test_an_observed_revision_from_wrong_to_right_comes_first_with_the_problems_prompt():
    wrong = t(30, correct=False, pid="q2")
    revised = t(31, correct=True, pid="q2", prompt=R, parent_id=wrong.id)
    still_wrong = t(32, correct=False, pid="q2", prompt=R, parent_id=wrong.id)
    of_right = t(33, correct=True, pid="q2", prompt=R, parent_id="not-in-the-set")
    plain_winner = t(34, correct=True, pid="q2")
    other_loser = t(35, correct=False, pid="q2")
    ps = srpo_pairs([wrong, revised, still_wrong, of_right, plain_winner, other_loser], k=5)
    # the observed revision first; the loser it revised is not used again; the other loser goes to the
    # plain winner (revision trajectories are never candidates: their prompt is a revision prompt)
    assert ids(ps.pairs) == [(31, 30), (34, 35)]
    obs = ps.pairs[0]
    assert obs.chosen.input_ids == [*P, 31, 2] and obs.chosen.prompt_len == 3  # w|x: the problem's prompt
    assert obs.chosen.loss_mask == [0, 0, 0, 1, 1] and obs.chosen.trajectory_id == revised.id
    assert obs.rejected.input_ids == [*P, 30, 2] and obs.rejected_text == wrong.response_text()
    assert obs.chosen_text == revised.response_text()
    c = ps.counts
    assert c["revision_trajectories"] == 3 and c["observed_revision_pairs"] == 1
    assert c["dropped_revision_not_loser_to_winner"] == 1 and c["dropped_revision_parent_missing"] == 1
    # k = 1: the observed revision fills the problem's quota
    assert ids(srpo_pairs([wrong, revised, plain_winner, other_loser], k=1).pairs) == [(31, 30)]


def test_a_revision_of_a_held_out_trajectory_is_never_trained_on():
    wrong = t(30, correct=False, pid="q2", source=Source.eval)
    revised = t(31, correct=True, pid="q2", prompt=R, parent_id=wrong.id)
    ps = srpo_pairs([wrong, revised])
    assert ps.pairs == [] and ps.counts["dropped_revision_eval_or_conversation"] == 1


def test_losers_without_a_winner_go_to_the_gold_solution_or_are_dropped(tokenizer):
    gold = gold_trajectory(
        tokenizer, prompt_ids=P, problem="q3", problem_id="q3", solution="2+2=4\nFinal answer: 4", gold="4"
    )
    trajs = [
        t(40, correct=False, pid="q3"),
        t(41, correct=False, pid="q3"),  # q3: only the gold solution wins
        t(50, correct=False, pid="q4"),  # q4: nothing to revise into
        t(60, correct=True, pid="q5"),
    ]  # q5: nothing to revise
    ps = srpo_pairs(trajs, gold={"q3": gold})
    assert [p.problem_key for p in ps.pairs] == ["q3", "q3"]
    assert [p.rejected.input_ids[3] for p in ps.pairs] == [40, 41]
    assert all(p.chosen.input_ids[3:] == gold.token_ids()[3:] for p in ps.pairs)
    assert ps.counts["dropped_loser_no_winner"] == 1 and ps.counts["dropped_problem_no_revision_pair"] == 2
    assert ps.counts["gold_added"] == 1


def test_an_empty_attempt_and_a_too_long_pair_are_dropped():
    blank = t(70, correct=False)
    blank = blank.model_copy(
        update={
            "segments": [blank.segments[0], Segment(kind=SegmentKind.model, text=" \n", token_ids=[70, 2])]
        }
    )
    long_loser = _mk("q1", [("p", P), ("m", [25] * 20)], correct=False, problem_id="q1")
    ps = srpo_pairs([t(10, correct=True), blank, long_loser, t(20, correct=False)], max_length=10)
    assert ids(ps.pairs) == [(10, 20)]
    assert ps.counts["dropped_loser_empty_response"] == 1 and ps.counts["dropped_pair_too_long"] == 1


def test_the_six_srpo_sequences_show_the_loser_and_the_winner_in_revision_prompts(tokenizer):
    from agent.prompts import revision_message

    w = _mk(
        "What is 2+2?",
        [("p", P), ("m", tokenizer.encode("```python\nprint(2+2)\n```"))],
        correct=True,
        problem_id="q",
    )
    lo = _mk("What is 2+2?", [("p", P), ("m", tokenizer.encode("\\boxed{5}"))], correct=False, problem_id="q")
    (pair,) = srpo_pairs([w, lo], max_turns=2).pairs
    items, _ = build_items([pair], "srpo", max_length=2048, tokenizer=tokenizer)
    (item,) = items
    seqs = item.sequences
    assert len(seqs) == 6
    w_resp, l_resp = pair.chosen.input_ids[3:], pair.rejected.input_ids[3:]
    # order w|x, l|x, w|x,l, l|x,l, w|x,w, l|x,w: responses alternate, prompts are x, show-l, show-w
    assert [s.input_ids[s.prompt_len :] for s in seqs] == [w_resp, l_resp] * 3
    assert seqs[0].input_ids[:3] == P and seqs[1].input_ids[:3] == P
    show_l = tokenizer.decode(seqs[2].input_ids[: seqs[2].prompt_len])
    show_w = tokenizer.decode(seqs[4].input_ids[: seqs[4].prompt_len])
    assert seqs[2].input_ids[: seqs[2].prompt_len] == seqs[3].input_ids[: seqs[3].prompt_len]
    assert pair.rejected_text.strip() in show_l and pair.chosen_text.strip() not in show_l
    assert pair.chosen_text.strip() in show_w
    # the revision prompt states the tool-call limit the agent's prompt stated (2), as at inference
    assert revision_message(pair.problem, pair.mode, pair.rejected_text, max_turns=2) in show_l
    assert "at most 2 python blocks" in show_l
    default = tokenizer.decode(
        revision_prompt_ids(tokenizer, pair.model_copy(update={"max_turns": None}), pair.rejected_text)
    )
    assert "at most 6 python blocks" in default


def test_the_other_builders_never_pair_a_revision_with_an_ordinary_sample():
    from trainer.pairs import irpo_pairs

    wrong = t(30, correct=False, pid="q2")
    revised = t(31, correct=True, pid="q2", prompt=R, parent_id=wrong.id)
    ps = irpo_pairs([wrong, revised, t(32, correct=True, pid="q2")], k=2)
    assert ids(ps.pairs) == [(32, 30), (32, 30)]  # the revision (another prompt) is not a winner here
    assert ps.counts["dropped_revision"] == 1
