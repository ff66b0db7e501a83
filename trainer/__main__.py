"""``python -m trainer worker``: the arq worker; ``python -m trainer train-run CONFIG``: one
training run (the child that ``accelerate launch`` starts, see :mod:`trainer.launch`)."""

from __future__ import annotations

import sys

USAGE = "usage: python -m trainer worker | python -m trainer train-run CONFIG.json"


def main(argv: list[str]) -> int:
    if argv[:1] == ["worker"] and len(argv) == 1:
        from trainer.worker import run_worker

        return run_worker()
    if argv[:1] == ["train-run"] and len(argv) == 2:
        from trainer.launch import train_run_main

        return train_run_main(argv[1])
    print(USAGE, file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
