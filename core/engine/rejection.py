"""The acceptance rule of speculative decoding: which drafted tokens the target keeps.

Greedy: keep drafts while each equals the target's argmax at its position, then add the
target's own argmax where they first differ (or after the last draft): the tokens are
exactly those of plain greedy decoding. Sampled (Leviathan et al. 2023, Chen et al. 2023):
keep draft d with probability min(1, p(d) / q(d)); at the first rejection draw from the
residual norm(max(0, p - q)); if all are kept, draw one more from p. Each kept or drawn
token is then distributed exactly as the target's p. A prompt-lookup draft is a point
mass, q = one-hot(d): acceptance is p(d), the residual is p without d.

`verify_sampled_reference` is the rule spelled out one position at a time, for the tests;
`verify_sampled` does the same arithmetic vectorised over the k positions. Not here: where
p and q come from (the Sampler's probs) and the bookkeeping (SpecDecoder, Scheduler).
"""

import torch


def verify_greedy(logits: torch.Tensor, draft_token_ids: list[int]) -> list[int]:
    """logits [k+1, V] at the last token and each draft -> the kept tokens (1..k+1 of them)."""
    # max().indices, as the Sampler's greedy path: the same first maximum on ties.
    target = logits.max(-1).indices.tolist()  # [k+1]
    kept = []
    for draft, best in zip(draft_token_ids, target, strict=False):
        if draft != best:
            break
        kept.append(draft)
    return kept + [target[len(kept)]]


def verify_sampled(
    target_probs: torch.Tensor,
    draft_token_ids: list[int],
    draft_probs: torch.Tensor | None,
    generator: torch.Generator,
) -> list[int]:
    """target_probs [k+1, V] and draft_probs [k, V] (None: point-mass drafts), both unnormalised
    (rows are divided by their sums here) -> the kept tokens (1..k+1 of them)."""
    k = len(draft_token_ids)
    p = target_probs / target_probs.sum(-1, keepdim=True)  # [k+1, V]
    ids = torch.tensor(draft_token_ids, dtype=torch.long, device=p.device)  # [k]
    rows = torch.arange(k, device=p.device)
    p_draft = p[rows, ids]  # [k]
    if draft_probs is None:
        q_draft = torch.ones_like(p_draft)
    else:
        q = draft_probs / draft_probs.sum(-1, keepdim=True)  # [k, V]
        q_draft = q[rows, ids]  # [k]
    u = torch.rand(k, generator=generator).to(p.device)  # [k]
    # u < p/q without dividing: a draft q gave zero mass could not have been drawn, but a
    # zero q must still never accept a token the target also rules out.
    accepted = ((u * q_draft < p_draft) & (p_draft > 0)).tolist()
    num_kept = accepted.index(False) if False in accepted else k
    if num_kept == k:
        last = p[k]
    elif draft_probs is None:
        last = p[num_kept].clone()
        last[draft_token_ids[num_kept]] = 0
    else:
        last = (p[num_kept] - q[num_kept]).clamp_(min=0)
    if not last.sum() > 0:  # p == q up to rounding: a rejection there is a float artefact
        last = p[min(num_kept, k)]
    return list(draft_token_ids[:num_kept]) + [_draw(last, generator)]


def _draw(probs: torch.Tensor, generator: torch.Generator) -> int:
    """One token from unnormalised probs [V] by the exponential race, as the Sampler draws."""
    noise = torch.empty(probs.shape).uniform_(generator=generator).log_().neg_()  # [V] Exp(1)
    return int((probs / noise.to(probs.device)).argmax())


def verify_sampled_reference(
    target_probs: torch.Tensor,
    draft_token_ids: list[int],
    draft_probs: torch.Tensor | None,
    generator: torch.Generator,
) -> list[int]:
    """The rule one position at a time with Python floats: the spec verify_sampled follows."""
    kept = []
    for j, d in enumerate(draft_token_ids):
        p = (target_probs[j] / target_probs[j].sum()).tolist()
        q = (
            [float(i == d) for i in range(len(p))]
            if draft_probs is None
            else (draft_probs[j] / draft_probs[j].sum()).tolist()
        )
        u = float(torch.rand(1, generator=generator))
        if q[d] > 0 and u < min(1.0, p[d] / q[d]):
            kept.append(d)
            continue
        residual = [max(0.0, a - b) for a, b in zip(p, q, strict=True)]
        total = sum(residual)
        return kept + [_pick(residual, total, generator)]
    p = (target_probs[-1] / target_probs[-1].sum()).tolist()
    return kept + [_pick(p, 1.0, generator)]


def _pick(probs: list[float], total: float, generator: torch.Generator) -> int:
    """Inverse-CDF draw from unnormalised probs."""
    u = float(torch.rand(1, generator=generator)) * total
    acc = 0.0
    for i, w in enumerate(probs):
        acc += w
        if u < acc:
            return i
    return max(range(len(probs)), key=probs.__getitem__)
