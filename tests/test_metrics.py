import pytest

from espl_bench.stats import pass_at_k


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [(5, 0, 1, 0.0), (5, 5, 1, 1.0), (5, 2, 1, 0.4), (4, 1, 2, 0.5), (10, 3, 10, 1.0), (3, 1, 3, 1.0),
     (10, 2, 3, 1 - (8 * 7 * 6) / (10 * 9 * 8))],
)
def test_unbiased_pass_at_k(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected)


@pytest.mark.parametrize(("n", "c", "k"), [(2, 3, 1), (2, 1, 3), (2, 1, 0)])
def test_pass_at_k_rejects_impossible_counts(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)
