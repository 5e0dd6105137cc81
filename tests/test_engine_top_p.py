"""Sort-free top-p (``looper_utils.engine.top_p``) against transformers' ``TopPLogitsWarper``.

CPU: the torch reference keeps exactly HF's nucleus on thousands of random
rows and samples from it in distribution. Triton: the kernel's threshold
equals the reference's (up to float rounding ties at the boundary) and its
draws follow the nucleus; the small shape runs on CUDA or under
``TRITON_INTERPRET=1`` (``PYTHONPATH=.:/path/to/triton TRITON_INTERPRET=1``),
the batch-256, 128k-vocabulary shape is marked ``gpu``.
"""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from looper_utils.engine import kernels as ek
from looper_utils.engine import top_p as tp
from looper_utils.engine.sampler import Engine

from _sampling import assert_draws_follow

NEG = float("-inf")
TOP_PS = [0.1, 0.5, 0.9, 0.95, 0.999]


def _hf_kept(scores: torch.Tensor, top_p: float) -> torch.Tensor:
    return TopPLogitsWarper(top_p)(None, scores.clone()) > NEG


def _rows(gen, batch: int, vocab: int, spread: float) -> torch.Tensor:
    """Float32 rows ``N(0, spread^2)`` (no ties); row 0 half -inf, row 1 one finite score, row 2 top-k masked."""
    x = torch.randn(batch, vocab, generator=gen) * spread
    x[0, : vocab // 2] = NEG
    x[1, 1:] = NEG
    x[2] = TopKLogitsWarper(max(1, vocab // 10))(None, x[2:3].clone())[0]
    return x


# ------------------------------------------------------------------------ CPU reference
@pytest.mark.parametrize("top_p", TOP_PS)
def test_reference_keeps_hf_nucleus_exactly(top_p):
    gen = torch.Generator().manual_seed(int(top_p * 1000))
    rows = 0
    # spreads = 1/T on N(0, 1) logits: flat (T = 3) to peaked (T = 0.1); vocab sizes off the chunk size
    for vocab, chunk in ((2, 8192), (7, 8192), (1000, 256), (5003, 1024)):
        for spread in (0.3, 1.0, 3.0, 10.0):
            x = _rows(gen, 48, vocab, spread)
            got = x >= tp.top_p_threshold(x, top_p, chunk=chunk)[:, None]
            want = _hf_kept(x, top_p)
            assert torch.equal(got, want), (vocab, spread, (got != want).any(1).nonzero().flatten().tolist())
            rows += x.shape[0]
    assert rows == 16 * 48


def test_reference_with_temperature_warper_and_other_thresholds_per_pass():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(64, 3000, generator=gen)
    for temp in (0.5, 0.8, 1.7):
        s = TemperatureLogitsWarper(temp)(None, x.clone())
        for n_thresholds in (2, 16, 64):
            tau = tp.top_p_threshold(s, 0.9, n_thresholds=n_thresholds)
            assert torch.equal(s >= tau[:, None], _hf_kept(s, 0.9)), (temp, n_thresholds)


def test_ties_at_the_boundary_are_all_kept():
    # sorted ascending HF sees 1, 1, 1, 2: cums 0.175, 0.35, 0.525, 1, so at top_p = 0.6 it keeps the 2 and
    # one arbitrary 1; the threshold keeps the 2 and all three 1s
    x = torch.tensor([[1.0, 2.0, 1.0, NEG, 1.0, 0.0 - 30.0]])
    hf = _hf_kept(x, 0.6)
    tau = tp.top_p_threshold(x, 0.6)
    assert tau.tolist() == [1.0]
    got = tp.top_p_filter(x, 0.6) > NEG
    assert got.tolist() == [[True, True, True, False, True, False]]
    assert bool((hf <= got).all()) and int(hf.sum()) == 2
    assert bool((x[got & ~hf] == tau).all())  # they differ only on tied scores equal to tau


def test_edge_rows():
    x = torch.tensor([[NEG, NEG, 3.0, NEG], [0.0, -0.0, NEG, NEG], [5.0, 5.0, 5.0, 5.0]])
    assert tp.top_p_threshold(x, 0.5).tolist() == [3.0, 0.0, 5.0]  # -0.0 ties +0.0
    assert torch.equal(tp.top_p_filter(x, 0.5) > NEG, x > NEG)
    one = torch.tensor([[1.5]])
    assert tp.top_p_threshold(one, 0.1).tolist() == [1.5]
    # top_p = 1 keeps every token with nonzero float32 probability, as HF
    y = torch.tensor([[0.0, -200.0, 1.0, NEG]])
    assert torch.equal(tp.top_p_filter(y, 1.0) > NEG, _hf_kept(y, 1.0))


def test_order_keys_are_monotone_and_invertible():
    gen = torch.Generator().manual_seed(0)
    specials = torch.tensor([NEG, float("inf"), 0.0, -0.0, 1e-45, -1e-45, 1e-38, -1e-38, 3.4e38, -3.4e38])
    x = torch.cat([specials, torch.randn(5000, generator=gen) * torch.logspace(-30, 30, 5000)])
    keys = tp.order_keys(x)
    order = torch.argsort(x, stable=True)
    assert bool((keys[order][1:] >= keys[order][:-1]).all())
    assert bool(((keys[:, None] < keys[None, :]) == (x[:, None] < x[None, :])).all())
    back = tp.key_floats(keys)
    assert torch.equal(back, torch.where(x == 0, torch.zeros_like(x), x))  # -0.0 comes back as +0.0


def test_reference_sampler_matches_renormalised_nucleus():
    logits = torch.tensor([[2.0, 1.5, 1.4, 1.0, 0.5, 0.2, -1.0, -3.0]])
    temp, p = 0.8, 0.85
    scores = TemperatureLogitsWarper(temp)(None, logits.clone())
    target = torch.softmax(TopPLogitsWarper(p)(None, scores.clone()), dim=-1)[0].double()
    assert int((target > 0).sum()) == 4
    n = 40000
    draws = tp.top_p_sample_torch(scores.expand(n, -1).contiguous(), p, torch.Generator().manual_seed(0))
    counts = torch.bincount(draws, minlength=8).double()
    assert counts[target == 0].sum() == 0
    keep = target > 0
    chi2 = float(((counts[keep] - target[keep] * n) ** 2 / (target[keep] * n)).sum())
    assert chi2 < 22.0, (chi2, counts.tolist())  # 3 dof: p(chi2 > 22) < 1e-4


# ------------------------------------------------------------------------- Triton kernel
def _tau_is_boundary(scores: torch.Tensor, tau: torch.Tensor, top_p: float, eps: float) -> torch.Tensor:
    """Per row: tau is HF's threshold up to ``eps`` of float64 mass (mass below tau <= 1-p < mass up to tau)."""
    probs = torch.softmax(scores.double(), dim=-1)
    below = (probs * (scores < tau[:, None])).sum(dim=1)
    upto = (probs * (scores <= tau[:, None])).sum(dim=1)
    thr = 1.0 - top_p
    return (below <= thr + eps) & (upto > thr - eps) & (tau <= scores.amax(dim=1))


def _kernel_checks(device: str, batch: int, vocab: int, n_draws: int, splits: int | None) -> None:
    gen = torch.Generator().manual_seed(0)
    seed = torch.tensor([7], device=device)
    # flat (T = 1 on N(0, 1): the nucleus is most of the row), peaked (x8), a temperature, a small top_p
    for spread, temp, top_p in ((1.0, 1.0, 0.95), (8.0, 1.0, 0.9), (1.0, 0.7, 0.5), (3.0, 1.0, 0.1)):
        logits = torch.randn(batch, vocab, generator=gen) * spread
        logits[0, : vocab // 2] = NEG
        logits[-1, 1:] = NEG
        logits = logits.bfloat16().to(device)  # bf16: many exact ties, all kept at the boundary
        tok, tau = tp.top_p_sample(logits, temp, top_p, seed, splits=splits, return_tau=True)
        scores = tp.scale_scores(logits, temp)
        ref = tp.top_p_threshold(scores, top_p)
        assert bool(_tau_is_boundary(scores, ref, top_p, 1e-6).all())
        differ = tau != ref
        # a difference is a float32 rounding tie of the mass against 1 - top_p: rare, and both valid
        assert int(differ.sum()) <= max(1, batch // 50), (spread, top_p, int(differ.sum()))
        assert bool(_tau_is_boundary(scores, tau, top_p, 1e-5).all()), (spread, top_p)
        drawn = scores.gather(1, tok[:, None])[:, 0]
        assert bool((drawn >= tau).all()) and bool((drawn > NEG).all())
    # chi-square of the draws against HF's renormalised nucleus (bf16 logits as the engine gets them)
    logits = torch.tensor([2.0, 1.5, 1.4, 1.0, 0.5, 0.2, -1.0, -3.0])
    temp, top_p = 0.8, 0.85
    scores = tp.scale_scores(logits.bfloat16(), temp)[None]
    target = torch.softmax(TopPLogitsWarper(top_p)(None, scores.clone()), -1)[0].double()
    draws = tp.top_p_sample(logits.expand(n_draws, -1).contiguous().bfloat16().to(device), temp, top_p, seed)
    counts = torch.bincount(draws.cpu(), minlength=8).double()
    assert counts[target == 0].sum() == 0
    keep = target > 0
    chi2 = float(((counts[keep] - target[keep] * n_draws) ** 2 / (target[keep] * n_draws)).sum())
    assert chi2 < 22.0, (chi2, counts.tolist())  # 3 dof: p(chi2 > 22) < 1e-4


def _kernel_device() -> str:
    pytest.importorskip("triton")
    if torch.cuda.is_available():
        return "cuda"
    if not ek.triton_available():
        pytest.skip("needs CUDA or TRITON_INTERPRET=1")
    return "cpu"


@pytest.mark.parametrize("batch,vocab,n_draws,splits", [
    pytest.param(4, 5000, 400, 3, id="small"),  # CUDA, or the interpreter (about a minute)
    pytest.param(256, 128256, 200000, None, id="gpu-256x128256", marks=pytest.mark.gpu),
])
def test_kernel_threshold_and_draws(batch, vocab, n_draws, splits):
    device = _kernel_device()
    if device == "cpu" and vocab > 10000:
        pytest.skip("too slow for the interpreter")
    _kernel_checks(device, batch, vocab, n_draws, splits)


def test_kernel_draws_do_not_depend_on_the_split_count():
    # the Philox counter is per column, as in gumbel_sample; the masses are summed across splits
    device = _kernel_device()
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 9000, generator=gen).bfloat16()
    logits[0] = NEG  # an all -inf row: no crash, token 0, tau -inf
    logits[1, :-1] = NEG
    logits = logits.to(device)
    seed = torch.tensor([3], device=device)
    runs = [tp.top_p_sample(logits, 0.7, 0.8, seed, splits=k, return_tau=True) for k in (1, 2, 5)]
    for tok, tau in runs[1:]:
        assert torch.equal(tok, runs[0][0]) and torch.equal(tau, runs[0][1])
    tok, tau = runs[0]
    assert tok[:2].tolist() == [0, 8999] and tau[0].item() == NEG
    assert torch.equal(tau[1:], tp.top_p_threshold(tp.scale_scores(logits, 0.7), 0.8)[1:])


def test_kernel_nucleus_of_everything_draws_what_gumbel_sample_draws():
    # rows of 0s and -infs: the nucleus is every finite score (all tied), so the restricted Gumbel race is
    # gumbel_sample's race with the same Philox counters
    device = _kernel_device()
    gen = torch.Generator().manual_seed(1)
    logits = torch.where(torch.rand(6, 5000, generator=gen) < 0.5, 0.0, NEG).to(device)
    seed = torch.tensor([11], device=device)
    tok, tau = tp.top_p_sample(logits, 1.0, 0.3, seed, return_tau=True)
    assert tau.tolist() == [0.0] * 6
    assert torch.equal(tok, ek.gumbel_sample(logits, 1.0, seed))


def test_kernel_check_and_engine_wiring(monkeypatch):
    device = _kernel_device()
    assert tp.check_top_p(device) == 0
    assert tp.top_p_ready(device)
    calls = []
    real = tp.top_p_sample
    import looper_utils.engine.sampler as sampler_mod

    monkeypatch.setattr(sampler_mod, "top_p_sample", lambda *a, **k: calls.append(1) or real(*a, **k))
    logits = torch.tensor([[2.0, 1.5, 1.4, 1.0, 0.5, 0.2, -1.0, -3.0]] * 3, device=device).bfloat16()
    fake = SimpleNamespace(fused=True, device=torch.device(device))
    gen = torch.Generator(device=device).manual_seed(0)
    tok = Engine._next_token(fake, logits, 0.8, 0.85, 0, gen)
    assert calls == [1] and tok.shape == (3,) and bool((tok < 4).all())  # the 4-token nucleus
    Engine._next_token(fake, logits, 0.8, 0.85, 5, gen)  # top-k keeps the sort path
    Engine._next_token(SimpleNamespace(fused=False, device=torch.device(device)), logits, 0.8, 0.85, 0, gen)
    assert calls == [1]


@pytest.mark.gpu
def test_gpu_engine_top_p_first_token_distribution():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(5)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                         initializer_range=0.1, pad_token_id=0)).cuda().eval()
    ids = torch.randint(3, 97, (1, 6), generator=torch.Generator().manual_seed(7)).cuda()
    engine = Engine(model, fused=True)
    with torch.no_grad():
        logits = engine.prefill_logits(ids)
    temp, p, n = 1.5, 0.9, 20000
    target = torch.softmax(TopPLogitsWarper(p)(None, tp.scale_scores(logits, temp)), -1)[0].double().cpu()
    g = torch.Generator(device="cuda").manual_seed(11)
    out = engine.sample(ids.expand(n, -1), max_new_tokens=1, temperature=temp, top_p=p, pad_token_id=0,
                        generator=g)
    counts = torch.bincount(out.sequences[:, 0].cpu(), minlength=97).double()
    assert_draws_follow(counts, target, n)

