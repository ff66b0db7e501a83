"""``mathagent train``: train the policy on a pairs file; writes a loadable checkpoint.

Errors a user can cause (missing file, bad option, unknown model) become one line on stderr
and exit status 2, never a traceback.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from agent.configuration import load
from agent.settings import AgentSettings
from mathagent.errors import fail, option_errors


def run_train(options: dict[str, Any]) -> int:
    from agent.modelstore import ModelSpecError
    from trainer.config import TrainConfig
    from trainer.io import DataError
    from trainer.train import train

    settings = load(AgentSettings)
    try:
        config = TrainConfig(state_dir=settings.state_dir, **options)
    except ValidationError as exc:
        return fail(option_errors(exc))
    if not config.pairs.is_file():
        return fail(f"--pairs {config.pairs}: no such file")
    try:
        result = train(config)
    except (DataError, ModelSpecError, ValueError) as exc:
        return fail(str(exc))
    print(
        f"trained {result.steps} steps on {result.items} items: loss {result.first_loss:.4f} -> "
        f"{result.last.get('loss', float('nan')):.4f}, margin {result.last.get('margin', float('nan')):.4f}, "
        f"{result.tokens_per_s:.0f} tokens/s; checkpoint in {result.out}"
    )
    return 0
