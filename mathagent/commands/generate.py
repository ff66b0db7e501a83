"""``mathagent generate`` and ``mathagent provision``: the plain model, no agent.

``generate`` streams the model's answer to a prompt (no tools): the quickest proof that the
provisioned model is real and loads; it deliberately skips the agent loop and the sandbox.
"""

from __future__ import annotations

from pathlib import Path

from agent.configuration import load
from agent.settings import AgentSettings
from mathagent.errors import fail


def run_provision() -> int:
    from agent import modelstore

    settings = load(AgentSettings)
    try:
        resolved = modelstore.resolve(settings.model, settings.state_dir)
    except modelstore.ModelSpecError as exc:
        return fail(str(exc))
    print(f"model {resolved.spec} version {resolved.version} at {resolved.path}")
    return 0


def run_generate(prompt: str, *, max_new_tokens: int, temperature: float) -> int:
    from agent.modelstore import ModelSpecError

    settings = load(AgentSettings)
    try:
        generate(prompt, model_spec=settings.model, state_dir=settings.state_dir, max_new_tokens=max_new_tokens,
                 temperature=temperature)
    except ModelSpecError as exc:
        return fail(str(exc))
    return 0


def generate(prompt: str, *, model_spec: str, state_dir: Path, max_new_tokens: int = 128, temperature: float = 0.0) -> str:
    import torch
    from transformers import TextStreamer

    from agent import modelstore

    torch.set_num_threads(1)
    resolved = modelstore.resolve(model_spec, state_dir)
    tok = modelstore.load_tokenizer(resolved.path)
    model = modelstore.load_model(resolved.path)
    ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt", return_dict=True)
    streamer = TextStreamer(tok, skip_prompt=True, skip_special_tokens=True)
    with torch.inference_mode():
        out = model.generate(
            **ids, max_new_tokens=max_new_tokens, do_sample=temperature > 0,
            temperature=temperature if temperature > 0 else None, top_p=None, top_k=None,
            streamer=streamer, pad_token_id=tok.pad_token_id,
        )
    return str(tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True))
