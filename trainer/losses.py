"""Masked sequence log-probs and the preference losses (DPO, IRPO's DPO+NLL, IPO, M-KTO, SFT, SRPO).

Plain functions of tensors, so each can be checked against a textbook formula on random inputs.
Conventions (docs/algorithms.md):

- ``log pi(tau|x)`` is the SUM of token log-probs over MODEL tokens only (the loss mask);
  prompt and observation tokens contribute nothing, to the value or to the gradient.
- Every loss is a mean over pairs of ``weight_i * loss_i`` (ScPO multiplies every term by the
  vote margin; unlabelled weights are 1).
- The NLL term of ``dpo+nll`` is normalised PER SEQUENCE by the winner's model-token count,
  then averaged over pairs (IRPO; TRL and the M-DPO code use a batch token-mean instead).

Hand-written rather than taken from TRL: TRL's loss code is entangled with its trainer (it
masks only the prompt, and its NLL term is a batch token-mean), and SRPO / weighted pairs are
not there at all.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

PAIR_LOSSES = ("dpo", "dpo+nll", "ipo", "kto")


def token_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``log softmax(logits)[label]`` per position, at least in float32 (``logits[..., t, :]`` scores ``labels[..., t]``).

    ``logits.gather - logsumexp`` avoids materialising a second vocabulary-sized tensor for
    the log-softmax output in the forward pass.
    """
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    picked = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def sequence_logps(
    logits: torch.Tensor, labels: torch.Tensor, loss_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of log-probs over masked positions, and the number of masked positions, per row.

    ``logits[b, t]`` is the distribution for ``labels[b, t]`` (the caller shifts). Positions
    with ``loss_mask == 0`` contribute exactly zero value and exactly zero gradient (``where``,
    not a multiplication, so even a non-finite logit there cannot leak through). Their labels
    may hold anything (for instance -100).
    """
    mask = loss_mask.bool()
    safe_labels = labels.masked_fill(~mask, 0)
    per_token = token_logps(logits, safe_labels)
    per_token = torch.where(mask, per_token, torch.zeros_like(per_token))
    return per_token.sum(-1), mask.sum(-1)


def _weights(weights: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    if weights is None:
        return torch.ones_like(like)
    return weights.to(like.dtype)


def kto_losses(
    policy_logps: torch.Tensor, ref_logps: torch.Tensor, desirable: torch.Tensor, *, beta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example KTO losses (lambda_D = lambda_U = 1) and the reference point z0 used.

    KTO's reference point is an estimate of KL(pi_theta || pi_ref), detached and clamped at 0.
    The KTO paper estimates it on mismatched (x, y') pairs of the micro-batch; for multi-turn
    trajectories a mismatched pair has no meaningful observation tokens, so we use the mean
    log-ratio of the micro-batch's own examples (reconstructed choice, stated here).
    """
    logratios = policy_logps - ref_logps
    z0 = logratios.detach().mean().clamp(min=0)
    desirable_loss = 1 - torch.sigmoid(beta * (logratios - z0))
    undesirable_loss = 1 - torch.sigmoid(beta * (z0 - logratios))
    return torch.where(desirable.bool(), desirable_loss, undesirable_loss), z0


def preference_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    *,
    loss_type: str,
    beta: float,
    chosen_lengths: torch.Tensor | None = None,
    alpha: float = 0.0,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean over pairs of ``weights * loss``, plus detached metrics (means over pairs).

    ``loss_type``:
      - ``dpo``: ``-log sigmoid(beta * (chosen log-ratio - rejected log-ratio))``;
      - ``dpo+nll``: ``dpo - alpha * policy_chosen / chosen_lengths`` (IRPO);
      - ``ipo``: ``(log-ratio difference - 1/(2 beta))^2`` on summed log-probs (the IPO paper;
        TRL length-normalises instead);
      - ``kto``: M-KTO, each pair is one desirable (chosen) and one undesirable (rejected)
        example; the pair's loss is the mean of the two;
      - ``sft``: ``-policy_chosen / chosen_lengths`` (STaR / RAFT); rejected and reference
        inputs are ignored (pass zeros).
    SRPO needs six sequences per pair: see :func:`srpo_loss`.
    """
    chosen_lr = policy_chosen - ref_chosen
    rejected_lr = policy_rejected - ref_rejected
    delta = chosen_lr - rejected_lr
    if loss_type in ("dpo+nll", "sft") and chosen_lengths is None:
        raise ValueError(f"loss_type={loss_type!r} needs chosen_lengths (model tokens of each winner)")
    if loss_type == "dpo":
        losses = -F.logsigmoid(beta * delta)
    elif loss_type == "dpo+nll":
        assert chosen_lengths is not None
        losses = -F.logsigmoid(beta * delta) - alpha * policy_chosen / chosen_lengths.to(policy_chosen.dtype)
    elif loss_type == "ipo":
        losses = (delta - 1 / (2 * beta)) ** 2
    elif loss_type == "kto":
        n = policy_chosen.shape[0]
        desirable = torch.cat([torch.ones(n), torch.zeros(n)]).to(policy_chosen.device)
        per_example, _ = kto_losses(
            torch.cat([policy_chosen, policy_rejected]), torch.cat([ref_chosen, ref_rejected]), desirable, beta=beta
        )
        losses = (per_example[:n] + per_example[n:]) / 2
    elif loss_type == "sft":
        assert chosen_lengths is not None
        losses = -policy_chosen / chosen_lengths.to(policy_chosen.dtype)
    else:
        raise ValueError(f"unknown loss_type {loss_type!r}; one of {', '.join((*PAIR_LOSSES, 'sft'))}")
    w = _weights(weights, losses)
    loss = (w * losses).mean()
    with torch.no_grad():
        metrics = {
            "loss": loss.detach(),
            "logps_chosen": policy_chosen.detach().mean(),
            "logps_rejected": policy_rejected.detach().mean(),
            "rewards_chosen": (beta * chosen_lr).detach().mean(),
            "rewards_rejected": (beta * rejected_lr).detach().mean(),
            "margin": (beta * delta).detach().mean(),
            "accuracy": (delta > 0).float().mean(),
        }
        if chosen_lengths is not None:
            metrics["nll_chosen"] = (-policy_chosen / chosen_lengths.to(policy_chosen.dtype)).detach().mean()
    return loss, metrics


class SrpoLogps(NamedTuple):
    """Summed model-token log-probs of the six SRPO sequences of each pair (each shape ``[n_pairs]``).

    ``w_l`` is the winner generated under the revision prompt that shows the loser, etc.
    """

    w: torch.Tensor
    l: torch.Tensor  # noqa: E741  (the paper's name)
    w_l: torch.Tensor
    l_l: torch.Tensor
    w_w: torch.Tensor
    l_w: torch.Tensor


SRPO_ORDER = ("w", "l", "w_l", "l_l", "w_w", "l_w")


def srpo_loss(
    policy: SrpoLogps, ref: SrpoLogps, *, beta: float, alpha: float, weights: torch.Tensor | None = None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """SRPO (Choi et al. 2024): ``alpha * l_SI + (1 - alpha) * l_gen``, mean over pairs of ``weights * L``.

    ``l_SI  = (1/2 - beta [r+(w|l) - r+(l|l)])^2 + (1/2 - beta [r+(w|w) - r+(l|w)])^2``
    ``l_gen = (1 - beta [r+(w|l) + r(w) - r+(l|w) - r(l)])^2``
    with every ``r`` a policy-minus-reference log-ratio over model tokens.
    """
    r = SrpoLogps(*(p - q for p, q in zip(policy, ref, strict=True)))
    l_si = (0.5 - beta * (r.w_l - r.l_l)) ** 2 + (0.5 - beta * (r.w_w - r.l_w)) ** 2
    l_gen = (1 - beta * (r.w_l + r.w - r.l_w - r.l)) ** 2
    losses = alpha * l_si + (1 - alpha) * l_gen
    loss = (_weights(weights, losses) * losses).mean()
    with torch.no_grad():
        delta = r.w - r.l
        metrics = {
            "loss": loss.detach(),
            "logps_chosen": policy.w.detach().mean(),
            "logps_rejected": policy.l.detach().mean(),
            "rewards_chosen": (beta * r.w).detach().mean(),
            "rewards_rejected": (beta * r.l).detach().mean(),
            "margin": (beta * delta).detach().mean(),
            "accuracy": (delta > 0).float().mean(),
            "l_si": l_si.detach().mean(),
            "l_gen": l_gen.detach().mean(),
        }
    return loss, metrics
