"""The episode state machine against a scripted engine (real tokenizer) and scripted sandbox results."""

from __future__ import annotations

import asyncio

import pytest
from agent_scripted import ScriptedEngine, ScriptedSandbox

from agent.events import CodeCell, EpisodeDone, SandboxOutput, TextDelta
from agent.loop import EpisodeConfig, pending_code, run_episode, run_to_end
from agent.trajectory import EpisodeEnd, Mode, SegmentKind, Trajectory
from sandbox.result import ExecResult, ExecStatus

PROBLEM = "A shop sells pens at 3 for $2. How much do 12 pens cost?"
TURN1 = "12 pens are 4 groups of 3.\n```python\nprint(12 // 3 * 2)\n```\n"
FINAL = "So they cost \\boxed{8} dollars."


def ok(out: str) -> ExecResult:
    return ExecResult(status=ExecStatus.ok, stdout=out)


def assert_exact_ids(traj: Trajectory, engine: ScriptedEngine) -> None:
    """Concatenated segment ids == the last sequence the engine consumed + what it produced;
    every model token was produced by the engine, in order."""
    last = engine.requests[-1]
    assert traj.token_ids() == last.prompt_ids + engine.produced[-1]
    model_ids = [t for s in traj.segments if s.kind is SegmentKind.model for t in s.token_ids]
    assert model_ids == [t for ids in engine.produced for t in ids]
    assert sum(traj.model_mask()) == len(model_ids)
    # every request's prompt is a prefix of the final sequence (no re-tokenisation between turns)
    for req in engine.requests:
        assert traj.token_ids()[: len(req.prompt_ids)] == req.prompt_ids


async def test_two_turn_episode_stops_at_fence_and_injects_output(tokenizer):
    engine = ScriptedEngine(tokenizer, [TURN1 + "this text after the fence is never generated", FINAL])
    sandbox = ScriptedSandbox([ok("8\n")])
    traj = await run_to_end(engine, sandbox, PROBLEM, EpisodeConfig(), gold="8")

    assert [s.kind for s in traj.segments] == ["prompt", "model", "observation", "model"]
    assert traj.segments[1].text == TURN1  # cut at the closing fence, the fence kept
    assert traj.segments[2].text == "```output\n8\n```\n"
    assert sandbox.calls == [("print(12 // 3 * 2)", traj.id)]
    assert sandbox.closed == [traj.id]
    assert traj.answer == "8" and traj.correct is True
    assert traj.finish_reason is EpisodeEnd.answer
    assert traj.segments[-1].token_ids[-1] == tokenizer.eos_token_id  # the end-of-turn id is a model token
    assert all(r.stop == ["```output", "\n```\n"] for r in engine.requests)
    assert all(r.version == "scripted-v1" for r in engine.requests)
    assert_exact_ids(traj, engine)
    assert traj.calls[0].result.stdout == "8\n"


async def test_hallucinated_output_block_is_cut(tokenizer):
    turn = "```python\nx = 7 * 6\nprint(x)\n```output\n41\n```\n"
    engine = ScriptedEngine(tokenizer, [turn, "The answer is \\boxed{42}."])
    sandbox = ScriptedSandbox([ok("42\n")])
    traj = await run_to_end(engine, sandbox, "What is 7*6?", EpisodeConfig(), gold="42")
    assert traj.segments[1].text == "```python\nx = 7 * 6\nprint(x)\n```output"
    assert traj.segments[2].text == "\n42\n```\n"  # the real output replaces the invented one
    assert sandbox.calls[0][0] == "x = 7 * 6\nprint(x)"
    assert traj.correct is True
    assert_exact_ids(traj, engine)


async def test_turn_limit_ends_episode_without_running_more_code(tokenizer):
    block = "```python\nprint(1)\n```\n"
    engine = ScriptedEngine(tokenizer, [block, block, block])
    sandbox = ScriptedSandbox([ok("1\n"), ok("1\n")])
    traj = await run_to_end(engine, sandbox, "loop", EpisodeConfig(max_turns=2))
    assert traj.finish_reason is EpisodeEnd.turn_limit
    assert traj.n_tool_calls == 2 and len(sandbox.calls) == 2
    assert traj.answer is None and traj.correct is None
    assert_exact_ids(traj, engine)


async def test_sandbox_errors_are_stated_plainly(tokenizer):
    engine = ScriptedEngine(tokenizer, ["```python\n1/0\n```\n", "```python\nwhile True: pass\n```\n",
                                        "```python\nprint(2)\n```\n", "```python\nprint(3)\n```\n", "\\boxed{3}"])
    sandbox = ScriptedSandbox([
        ExecResult(status=ExecStatus.error, stderr="Traceback (most recent call last):\n  File \"<cell 1>\", line 1\nZeroDivisionError: division by zero\n"),
        ExecResult(status=ExecStatus.timeout, wall_ms=10000),
        ConnectionRefusedError("sandbox is down"),
        ExecResult(status=ExecStatus.ok, stdout="3\n", state_reset=True),
    ])
    events = [e async for e in run_episode(engine, sandbox, "x", EpisodeConfig(), gold="3")]
    obs = [e.text for e in events if isinstance(e, SandboxOutput)]
    assert "ZeroDivisionError: division by zero" in obs[0]
    assert "timed out after 10 s" in obs[1] and "re-run" in obs[1]
    assert "sandbox could not run this block" in obs[2] and "not a mistake in your code" in obs[2]
    assert "restarted" in obs[3] and obs[3].rstrip().endswith("3\n```")
    traj = events[-1].trajectory
    assert [c.result.status for c in traj.calls] == ["error", "timeout", "sandbox_error", "ok"]
    assert traj.correct is True
    assert_exact_ids(traj, engine)


async def test_no_answer_and_token_budget(tokenizer):
    engine = ScriptedEngine(tokenizer, ["I am not sure."])
    traj = await run_to_end(engine, ScriptedSandbox([]), "x", EpisodeConfig())
    assert traj.finish_reason is EpisodeEnd.no_answer and traj.answer is None

    engine = ScriptedEngine(tokenizer, ["word " * 200])
    traj = await run_to_end(engine, ScriptedSandbox([]), "x", EpisodeConfig(max_new_tokens=20))
    assert traj.finish_reason is EpisodeEnd.token_budget
    assert len(traj.segments[1].token_ids) == 20

    # total budget: the second turn gets only what is left of the episode budget
    engine = ScriptedEngine(tokenizer, ["```python\nprint(1)\n```\n", "word " * 400])
    prompt_len = len(engine.chat_prefix([{"role": "user", "content": "x"}]))
    cfg = EpisodeConfig(max_total_tokens=prompt_len + 700, max_new_tokens=384)
    traj = await run_to_end(engine, ScriptedSandbox([ok("1\n")]), "x", cfg)
    assert traj.finish_reason is EpisodeEnd.token_budget
    assert len(traj.token_ids()) <= cfg.max_total_tokens


async def test_fence_that_opens_a_bare_block_is_continued(tokenizer):
    # "\n```\n" also matches a bare opening fence; the turn continues until the block closes.
    engine = ScriptedEngine(tokenizer, ["Compute:\n```\n", "print(5)\n```\n", "\\boxed{5}"])
    sandbox = ScriptedSandbox([ok("5\n")])
    traj = await run_to_end(engine, sandbox, "x", EpisodeConfig(), gold="5")
    assert sandbox.calls[0][0] == "print(5)"
    assert traj.segments[1].text == "Compute:\n```\nprint(5)\n```\n"
    assert len(engine.requests) == 3 and traj.correct is True
    assert_exact_ids(traj, engine)


async def test_cot_and_arc_modes_have_no_tools(tokenizer):
    engine = ScriptedEngine(tokenizer, ["3 for 2 dollars...\nFinal answer: 8"])
    traj = await run_to_end(engine, None, PROBLEM, EpisodeConfig(mode=Mode.cot), gold="$8")
    assert engine.requests[0].stop == []
    assert "Final answer: ..." in traj.segments[0].text
    assert traj.answer == "8" and traj.correct is True

    engine = ScriptedEngine(tokenizer, ["Plants make food.\nFinal answer: (B)"])
    traj = await run_to_end(engine, None, "Q?\n(A) x\n(B) y", EpisodeConfig(mode=Mode.arc), gold="B")
    assert traj.answer == "B" and traj.correct is True


async def test_streaming_deltas_and_early_close_cancels(tokenizer):
    engine = ScriptedEngine(tokenizer, [TURN1, FINAL], delay_s=0.01)
    sandbox = ScriptedSandbox([ok("8\n")])
    events = [e async for e in run_episode(engine, sandbox, PROBLEM, EpisodeConfig(stream_text=True))]
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    assert text.startswith(TURN1) and "\\boxed{8}" in text
    assert any(isinstance(e, CodeCell) for e in events) and isinstance(events[-1], EpisodeDone)

    # close after the first code cell: the engine stream is closed, the session closed
    engine = ScriptedEngine(tokenizer, [TURN1, "long " * 300], delay_s=0.01)
    sandbox = ScriptedSandbox([ok("8\n")])
    agen = run_episode(engine, sandbox, PROBLEM, EpisodeConfig(stream_text=True))
    seen = 0
    async for e in agen:
        if isinstance(e, TextDelta) and e.turn == 1:
            seen += 1
            if seen == 3:
                break
    await agen.aclose()
    assert engine.cancelled == 1
    assert len(sandbox.closed) == 1


async def test_task_cancellation_closes_session(tokenizer):
    engine = ScriptedEngine(tokenizer, [TURN1, FINAL], delay_s=0.2)
    sandbox = ScriptedSandbox([ok("8\n")])
    task = asyncio.create_task(run_to_end(engine, sandbox, PROBLEM, EpisodeConfig()))
    while not sandbox.calls:
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert engine.cancelled == 1 and len(sandbox.closed) == 1


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("```python\nprint(1)\n```\n", "print(1)"),
        ("a\n```python\nx=1\n```\nmore text", None),
        ("```python\nprint(1)\n```output", "print(1)"),
        ("no code", None),
        ("```python\n\n```\n", None),
    ],
)
def test_pending_code(text, code):
    assert pending_code(text) == code
