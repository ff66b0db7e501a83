"""Run by test_distributed.py, directly or under ``accelerate launch``: a few steps of a tiny
random model on fixed synthetic pairs; curves.jsonl in argv[1], per-process batch argv[2]."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from support.paths import model_state_dir

from agent.modelstore import load_tokenizer, resolve, tiny_random_model
from agent.trajectory import Segment, SegmentKind, Trajectory
from trainer.config import TrainConfig
from trainer.pairs import irpo_pairs
from trainer.train import train


def main() -> None:
    out, per_device = Path(sys.argv[1]), int(sys.argv[2])
    state = model_state_dir()
    tok = load_tokenizer(resolve("smollm2", state).path)
    g = torch.Generator().manual_seed(0)
    trajs = []
    for i in range(4):
        prompt = torch.randint(100, 3000, (8,), generator=g).tolist()
        for correct in (True, False):
            resp = torch.randint(100, 3000, (int(torch.randint(5, 15, (1,), generator=g)),), generator=g).tolist()
            obs = torch.randint(100, 3000, (4,), generator=g).tolist()
            segs = [("prompt", prompt), ("model", resp[:3]), ("observation", obs), ("model", [*resp[3:], 2])]
            trajs.append(Trajectory(problem=f"p{i}", correct=correct,
                                    segments=[Segment(kind=SegmentKind(k), text="", token_ids=t) for k, t in segs]))
    pairs = irpo_pairs(trajs, k=1).pairs
    config = TrainConfig(pairs=out / "unused", out=out, loss="dpo+nll", lr=1e-2, per_device_batch_size=per_device,
                         max_steps=2, warmup_ratio=0.0, progress=False, shuffle=False)
    train(config, model=tiny_random_model(tok), tokenizer=tok, pairs=pairs)


if __name__ == "__main__":
    main()
