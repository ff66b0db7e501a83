"""Pieces with no service: output capping, traceback trimming, settings, client transport failures."""

from __future__ import annotations

import pytest

from sandbox.client import SandboxClient, SandboxUnreachable
from sandbox.harness import run_cell
from sandbox.settings import SandboxSettings
from sandbox.supervisor import CappedStream


def test_capped_stream_keeps_prefix_and_valid_utf8() -> None:
    s = CappedStream(5)
    s.feed("éééé".encode())  # 8 bytes, the cap cuts a character in half
    assert s.truncated and s.total == 8
    text = s.text()
    text.encode("utf-8")  # valid UTF-8, no lone surrogates
    assert text.startswith("éé") and "\\x" in text


def test_traceback_trimmed_to_cells(capsys: pytest.CaptureFixture[str]) -> None:
    ns: dict = {}
    raised, exc = run_cell("import json\njson.loads('{')", 3, ns)
    err = capsys.readouterr().err
    assert raised and exc == "JSONDecodeError"
    assert '<cell 3>", line 2' in err and "json/decoder.py" not in err and "harness" not in err


def test_syntax_error_points_at_cell(capsys: pytest.CaptureFixture[str]) -> None:
    raised, exc = run_cell("def f(:\n  pass", 1, {})
    err = capsys.readouterr().err
    assert raised and exc == "SyntaxError" and '<cell 1>", line 1' in err


class _ClosedStream:
    """What sys.stdout/sys.stderr become after the cell runs ``os.close(1)`` / ``os.close(2)``."""

    def write(self, _text: str) -> int:
        raise OSError(9, "Bad file descriptor")

    def flush(self) -> None:
        raise OSError(9, "Bad file descriptor")


def test_cell_that_closed_its_own_output_still_reports(monkeypatch: pytest.MonkeyPatch) -> None:
    # The error report itself cannot be written; run_cell must still return (the worker then sends
    # "done"), never let the write error escape (the supervisor would have to kill the worker).
    monkeypatch.setattr("sys.stdout", _ClosedStream())
    monkeypatch.setattr("sys.stderr", _ClosedStream())
    assert run_cell("print('gone')", 1, {}) == (True, "OSError")
    assert run_cell("raise SystemExit(3)", 2, {}) == (True, "SystemExit")


def test_trailing_expression_is_displayed(capsys: pytest.CaptureFixture[str]) -> None:
    ns: dict = {}
    run_cell("a = 2\na * 21", 1, ns)
    run_cell("None", 2, ns)
    assert capsys.readouterr().out == "42\n"


def test_settings_strict_unless_dev(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MATHAGENT_DEV", raising=False)
    assert SandboxSettings().strict_mode
    monkeypatch.setenv("MATHAGENT_DEV", "1")
    assert not SandboxSettings().strict_mode
    monkeypatch.setenv("MATHAGENT_SANDBOX_STRICT", "true")
    assert SandboxSettings().strict_mode
    with pytest.raises(ValueError):
        SandboxSettings(url="tcp://0.0.0.0:1")


async def test_transport_failure_is_sandbox_error(tmp_path) -> None:
    async with SandboxClient(f"unix://{tmp_path}/nothing.sock") as c:
        r = await c.execute("print(1)")
        assert r.status == "sandbox_error" and "unreachable" in (r.detail or "")
        with pytest.raises(SandboxUnreachable):
            await c.health()
