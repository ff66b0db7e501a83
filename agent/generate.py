"""``mathagent generate``: the plain model answering a prompt (no tools), streamed to stdout.

The quickest proof that the provisioned model is real and loads; it deliberately skips the
agent loop and the sandbox.
"""

from __future__ import annotations

from pathlib import Path


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
