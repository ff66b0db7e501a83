"""Each loss against an independent, deliberately naive implementation (python loops over
pairs and tokens, math.log/exp), on random tensors, masks and weights."""

from __future__ import annotations

import math

import pytest
import torch

from trainer.losses import SrpoLogps, preference_loss, sequence_logps, srpo_loss

TOL = 1e-6


def naive_seq_logp(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> list[tuple[float, int]]:
    out = []
    for b in range(logits.shape[0]):
        total, n = 0.0, 0
        for t in range(logits.shape[1]):
            if mask[b, t]:
                row = logits[b, t].double().tolist()
                m = max(row)
                lse = m + math.log(sum(math.exp(v - m) for v in row))
                total += row[int(labels[b, t])] - lse
                n += 1
        out.append((total, n))
    return out


def logsig(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def naive_loss(pc, pr, rc, rr, *, loss_type, beta, lengths, alpha, weights) -> float:
    n = len(pc)
    terms = []
    z0 = None
    if loss_type == "kto":
        ratios = [pc[i] - rc[i] for i in range(n)] + [pr[i] - rr[i] for i in range(n)]
        z0 = max(0.0, sum(ratios) / len(ratios))
    for i in range(n):
        cr, rj = pc[i] - rc[i], pr[i] - rr[i]
        if loss_type == "dpo":
            v = -logsig(beta * (cr - rj))
        elif loss_type == "dpo+nll":
            v = -logsig(beta * (cr - rj)) - alpha * pc[i] / lengths[i]
        elif loss_type == "ipo":
            v = (cr - rj - 1 / (2 * beta)) ** 2
        elif loss_type == "kto":
            v = ((1 - sig(beta * (cr - z0))) + (1 - sig(beta * (z0 - rj)))) / 2
        elif loss_type == "sft":
            v = -pc[i] / lengths[i]
        terms.append(weights[i] * v)
    return sum(terms) / n


def random_inputs(seed: int, n: int = 7):
    g = torch.Generator().manual_seed(seed)
    pc, pr = -torch.rand(n, generator=g, dtype=torch.float64) * 50, -torch.rand(n, generator=g, dtype=torch.float64) * 50
    rc, rr = -torch.rand(n, generator=g, dtype=torch.float64) * 50, -torch.rand(n, generator=g, dtype=torch.float64) * 50
    lengths = torch.randint(1, 40, (n,), generator=g)
    weights = torch.rand(n, generator=g, dtype=torch.float64)
    return pc, pr, rc, rr, lengths, weights


def test_sequence_logps_matches_naive_and_ignores_masked_labels():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 9, 17, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 17, (3, 9), generator=g)
    mask = torch.rand(3, 9, generator=g) > 0.4
    labels_with_ignore = labels.masked_fill(~mask, -100)  # masked labels may hold anything
    got, n = sequence_logps(logits, labels_with_ignore, mask.long())
    for b, (want, want_n) in enumerate(naive_seq_logp(logits, labels, mask)):
        assert got[b].item() == pytest.approx(want, abs=TOL)
        assert int(n[b]) == want_n


@pytest.mark.parametrize("loss_type", ["dpo", "dpo+nll", "ipo", "kto", "sft"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_preference_losses_match_naive(loss_type, seed):
    pc, pr, rc, rr, lengths, weights = random_inputs(seed)
    beta, alpha = 0.1 + seed * 0.2, 0.5 + seed
    got, metrics = preference_loss(
        pc, pr, rc, rr, loss_type=loss_type, beta=beta, chosen_lengths=lengths, alpha=alpha, weights=weights
    )
    want = naive_loss(
        pc.tolist(), pr.tolist(), rc.tolist(), rr.tolist(),
        loss_type=loss_type, beta=beta, lengths=lengths.tolist(), alpha=alpha, weights=weights.tolist(),
    )
    assert got.item() == pytest.approx(want, abs=TOL)
    margins = [beta * ((pc[i] - rc[i]) - (pr[i] - rr[i])).item() for i in range(len(pc))]
    assert metrics["margin"].item() == pytest.approx(sum(margins) / len(margins), abs=TOL)
    assert metrics["accuracy"].item() == pytest.approx(sum(m > 0 for m in margins) / len(margins))
    assert metrics["rewards_chosen"].item() == pytest.approx(beta * (pc - rc).mean().item(), abs=TOL)


def test_unweighted_single_turn_dpo_is_the_textbook_formula():
    """-log sigmoid(beta * (log pi(w)/pi_ref(w) - log pi(l)/pi_ref(l))), unmasked, from full logits."""
    g = torch.Generator().manual_seed(3)
    v, t = 11, 6
    pol = torch.randn(2, t, v, generator=g, dtype=torch.float64)
    ref = torch.randn(2, t, v, generator=g, dtype=torch.float64)
    labels = torch.randint(0, v, (2, t), generator=g)
    ones = torch.ones(2, t)
    lp, _ = sequence_logps(pol, labels, ones)
    lr, _ = sequence_logps(ref, labels, ones)
    got, _ = preference_loss(lp[:1], lp[1:], lr[:1], lr[1:], loss_type="dpo", beta=0.1)
    logp = lambda logits, y: sum(torch.log_softmax(logits[i], -1)[y[i]].item() for i in range(t))  # noqa: E731
    w = logp(pol[0], labels[0]) - logp(ref[0], labels[0])
    lo = logp(pol[1], labels[1]) - logp(ref[1], labels[1])
    assert got.item() == pytest.approx(-math.log(sig(0.1 * (w - lo))), abs=TOL)


def test_nll_term_is_normalised_per_sequence_not_per_batch():
    pc = torch.tensor([-10.0, -100.0], dtype=torch.float64)
    zeros = torch.zeros(2, dtype=torch.float64)
    lengths = torch.tensor([10, 100])
    loss, _ = preference_loss(pc, zeros, zeros, zeros, loss_type="sft", beta=0.1, chosen_lengths=lengths)
    assert loss.item() == pytest.approx(1.0)  # mean of 10/10 and 100/100; a token mean would give 110/110 too...
    pc = torch.tensor([-10.0, -50.0], dtype=torch.float64)
    loss, _ = preference_loss(pc, zeros, zeros, zeros, loss_type="sft", beta=0.1, chosen_lengths=lengths)
    assert loss.item() == pytest.approx((1.0 + 0.5) / 2)  # ...but here a token mean would give 60/110


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("alpha", [0.0, 0.8, 1.0])
def test_srpo_matches_naive(seed, alpha):
    g = torch.Generator().manual_seed(seed)
    n, beta = 5, 0.3
    pol = [-torch.rand(n, generator=g, dtype=torch.float64) * 30 for _ in range(6)]
    ref = [-torch.rand(n, generator=g, dtype=torch.float64) * 30 for _ in range(6)]
    weights = torch.rand(n, generator=g, dtype=torch.float64)
    got, _ = srpo_loss(SrpoLogps(*pol), SrpoLogps(*ref), beta=beta, alpha=alpha, weights=weights)
    total = 0.0
    for i in range(n):
        r = {name: pol[j][i].item() - ref[j][i].item() for j, name in enumerate(["w", "l", "wl", "ll", "ww", "lw"])}
        l_si = (0.5 - beta * (r["wl"] - r["ll"])) ** 2 + (0.5 - beta * (r["ww"] - r["lw"])) ** 2
        l_gen = (1 - beta * (r["wl"] + r["w"] - r["lw"] - r["l"])) ** 2
        total += weights[i].item() * (alpha * l_si + (1 - alpha) * l_gen)
    assert got.item() == pytest.approx(total / n, abs=TOL)


def test_masked_positions_get_exactly_zero_gradient_and_do_not_change_the_loss():
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(2, 8, 13, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 13, (2, 8), generator=g)
    mask = torch.tensor([[0, 0, 1, 1, 0, 0, 1, 1], [0, 1, 1, 0, 0, 1, 1, 0]])  # prompt / model / observation
    ref = torch.tensor([-20.0, -25.0], dtype=torch.float64)

    def loss_of(lg):
        lp, n = sequence_logps(lg, labels, mask)
        return preference_loss(lp[:1], lp[1:], ref[:1], ref[1:], loss_type="dpo+nll", beta=0.1, chosen_lengths=n[:1], alpha=1.0)[0]

    loss = loss_of(logits)
    loss.backward()
    assert logits.grad is not None
    masked = mask == 0
    assert torch.count_nonzero(logits.grad[masked]) == 0
    assert torch.count_nonzero(logits.grad[~masked]) > 0
    changed = logits.detach().clone()
    changed[masked] = torch.randn(int(masked.sum()), 13, generator=g, dtype=torch.float64) * 100
    changed[0, 4, 3] = float("inf")  # even a non-finite logit on an observation token leaks nothing
    assert loss_of(changed).item() == loss.item()


def test_bad_arguments_are_clear_errors():
    x = torch.zeros(2)
    with pytest.raises(ValueError, match="chosen_lengths"):
        preference_loss(x, x, x, x, loss_type="dpo+nll", beta=0.1)
    with pytest.raises(ValueError, match="unknown loss_type"):
        preference_loss(x, x, x, x, loss_type="orpo", beta=0.1)
