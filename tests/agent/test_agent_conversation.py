"""A chat's context in an episode (scripted engine, real tokenizer): the prompt holds the system
prompt and the earlier turns, exactly; the oldest exchanges go first when the budget is short;
the reply bound ends the episode with a token-budget finish (the trainer's side of it:
tests/trainer/test_pairs.py)."""

from __future__ import annotations

import pytest
from agent_scripted import ScriptedEngine, ScriptedSandbox

from agent import prompts
from agent.conversation import ContextTooLong, Conversation, Turn, fit, prompt_limit
from agent.loop import EpisodeConfig, run_to_end
from agent.solver import Solver, SolverSettings
from agent.trajectory import EpisodeEnd, SegmentKind
from sandbox.result import ExecResult, ExecStatus

FIRST = Turn(role="user", content="What is 17 * 23?")
ANSWER = Turn(role="assistant", content="```python\nprint(17 * 23)\n```\n```output\n391\n```\nSo \\boxed{391}.")


def _conversation(n: int = 1, system: str | None = "Talk like a pirate.") -> Conversation:
    turns = []
    for i in range(n):
        turns += [Turn(role="user", content=f"question {i}: " + "lorem ipsum " * 30), Turn(role="assistant", content=f"answer {i}")]
    return Conversation(system=system, turns=[*turns, FIRST, ANSWER])


async def test_the_prompt_holds_the_system_prompt_and_the_earlier_turns(tokenizer):
    engine = ScriptedEngine(tokenizer, ["Twice 391 is \\boxed{782}."])
    conv = Conversation(system="Talk like a pirate.", turns=[FIRST, ANSWER])
    traj = await run_to_end(engine, ScriptedSandbox([]), "Now double it.", EpisodeConfig(), conversation=conv)
    user = prompts.user_message("Now double it.", "tir", max_turns=EpisodeConfig().max_turns)
    expected = engine.chat_prefix(prompts.messages(user, system="Talk like a pirate.", history=conv.history()))
    assert traj.segments[0].token_ids == expected == engine.requests[0].prompt_ids
    assert traj.segments[0].text.index("pirate") < traj.segments[0].text.index("17 * 23") < traj.segments[0].text.index(
        "Now double it.")
    assert traj.context_messages == 3 and not traj.standalone
    alone = await run_to_end(ScriptedEngine(tokenizer, ["\\boxed{1}"]), ScriptedSandbox([]), "1?", EpisodeConfig())
    assert alone.context_messages == 0 and alone.standalone


def test_fit_drops_the_oldest_exchanges_first(tokenizer):
    engine = ScriptedEngine(tokenizer, [])
    solver = Solver(engine, ScriptedSandbox([]), None, SolverSettings(max_new_tokens=64, max_total_tokens=400))
    limit = prompt_limit(64, 400)
    fitted = solver.fit_conversation(_conversation(4), "Now double it.", "tir", 2)  # type: ignore[arg-type]
    assert fitted.dropped > 0 and fitted.dropped % 2 == 0  # whole exchanges
    assert fitted.turns[0].role == "user" and fitted.turns[-2:] == [FIRST, ANSWER]  # the newest kept
    assert fitted.system == "Talk like a pirate."  # never cut
    user = prompts.user_message("Now double it.", "tir", max_turns=2)
    assert len(engine.chat_prefix(prompts.messages(user, system=fitted.system, history=fitted.history()))) <= limit
    one_more = fitted.model_copy(update={"turns": _conversation(4).turns[fitted.dropped - 2:]})
    assert len(engine.chat_prefix(prompts.messages(user, system=one_more.system, history=one_more.history()))) > limit
    with pytest.raises(ContextTooLong) as exc:
        solver.fit_conversation(Conversation(system="arr " * 400), "Now double it.", "tir", 2)  # type: ignore[arg-type]
    assert exc.value.limit == limit and exc.value.tokens > limit


def test_fit_keeps_everything_that_fits():
    conv = _conversation(2)
    assert fit(conv, lambda c: 10 * len(c.turns), 1000) == conv


async def test_the_reply_bound_ends_the_episode_as_length(tokenizer):
    turn = "Let me compute.\n```python\nprint(17 * 23)\n```\n"
    engine = ScriptedEngine(tokenizer, [turn, "It is \\boxed{391}."])
    sandbox = ScriptedSandbox([ExecResult(status=ExecStatus.ok, stdout="391\n")])
    cap = len(engine.encode(turn)) + 3
    traj = await run_to_end(engine, sandbox, "17*23?", EpisodeConfig(max_completion_tokens=cap))
    generated = sum(len(s.token_ids) for s in traj.segments if s.kind is SegmentKind.model)
    assert generated <= cap and traj.finish_reason is EpisodeEnd.token_budget
    assert engine.requests[-1].max_new_tokens <= 3 and traj.sampling.max_completion_tokens == cap
    short = await run_to_end(ScriptedEngine(tokenizer, [turn]), ScriptedSandbox([]), "17*23?",
                             EpisodeConfig(max_completion_tokens=4))
    assert short.finish_reason is EpisodeEnd.token_budget and short.calls == []  # cut before the block closed
