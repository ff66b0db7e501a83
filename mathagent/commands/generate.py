"""``mathagent generate`` and ``mathagent provision``: the plain model, no agent.

``generate`` streams the model's answer to a prompt (no tools): the quickest proof that the
provisioned model is real and loads; it deliberately skips the agent loop and the sandbox.
"""

from __future__ import annotations

from pathlib import Path

from agent.configuration import load
from agent.settings import AgentSettings
from mathagent.errors import fail


def run_provision(export: Path | None = None) -> int:
    """Resolve MATHAGENT_MODEL into the cache; ``export``: also make that path a symlink to the
    checkpoint (replaced atomically), so another process (vLLM) can serve the very same files."""
    import os

    from agent import modelstore

    settings = load(AgentSettings)
    try:
        resolved = modelstore.resolve(settings.model, settings.state_dir)
    except modelstore.ModelSpecError as exc:
        return fail(str(exc))
    print(f"model {resolved.spec} version {resolved.version} at {resolved.path}")
    if export is not None:
        if export.exists() and not export.is_symlink():
            return fail(f"--export {export}: exists and is not a symlink (refusing to replace it)")
        export.parent.mkdir(parents=True, exist_ok=True)
        tmp = export.with_name(f".{export.name}.{os.getpid()}")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(Path(resolved.path).resolve(), target_is_directory=True)
        os.replace(tmp, export)
        print(f"exported as {export}")
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
