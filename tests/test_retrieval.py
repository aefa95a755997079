"""R@k against a brute-force reference."""

import torch

from fedvssl.downstream.retrieval import recall_at_k


def brute_force(q, ql, g, gl, k):
    hits = 0
    for i in range(len(q)):
        sims = [float(q[i] @ g[j] / g[j].norm()) for j in range(len(g))]
        order = sorted(range(len(g)), key=lambda j: -sims[j])[:k]
        hits += any(int(gl[j]) == int(ql[i]) for j in order)
    return 100.0 * hits / len(q)


def test_matches_brute_force_on_random_features():
    gen = torch.Generator().manual_seed(0)
    q, g = torch.randn(40, 16, generator=gen), torch.randn(70, 16, generator=gen)
    ql, gl = torch.randint(0, 5, (40,), generator=gen), torch.randint(0, 5, (70,), generator=gen)
    ks = (1, 5, 10, 20, 50)
    got = recall_at_k(q, ql, g, gl, ks, chunk=16)
    for k in ks:
        assert abs(got[f"R@{k}"] - brute_force(q, ql, g, gl, k)) < 1e-9


def test_definition_at_least_one_of_top_k():
    g = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    gl = torch.tensor([0, 0, 1])
    q, ql = torch.tensor([[1.0, 0.05]]), torch.tensor([1])
    r = recall_at_k(q, ql, g, gl, (1, 2, 3))
    assert (r["R@1"], r["R@2"], r["R@3"]) == (0.0, 0.0, 100.0)


def test_query_norm_does_not_change_ranking_and_ties_count_once():
    g = torch.tensor([[2.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # two identical directions: a tie
    gl = torch.tensor([3, 3, 4])
    q = torch.tensor([[5.0, 0.0], [0.0, 0.1]])
    ql = torch.tensor([3, 4])
    assert recall_at_k(q, ql, g, gl, (1,)) == {"R@1": 100.0}
    assert recall_at_k(q * 100, ql, g, gl, (1,)) == {"R@1": 100.0}


def test_k_larger_than_gallery():
    r = recall_at_k(torch.randn(3, 4), torch.tensor([0, 1, 2]), torch.randn(2, 4), torch.tensor([0, 1]), (1, 50))
    assert abs(r["R@50"] - 100.0 * 2 / 3) < 1e-9
