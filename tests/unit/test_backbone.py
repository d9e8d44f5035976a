import pytest
import torch

from model.backbone import Transformer
from model.cache import Rows
from model.config import TransformerConfig

CFG = TransformerConfig(hidden=64, layers=2, heads=4, kv_heads=2, ffn=128)


@pytest.fixture
def stack():
    torch.manual_seed(0)
    return Transformer(CFG, causal=True).eval()


def test_causal_output_ignores_later_positions(stack):
    x = torch.randn(1, 10, 64)
    y = x.clone()
    y[:, 6:] = torch.randn(1, 4, 64)
    a, b = stack(x), stack(y)
    assert torch.allclose(a[:, :6], b[:, :6], atol=1e-6)
    assert not torch.allclose(a[:, 6:], b[:, 6:], atol=1e-3)


def test_bidirectional_output_sees_later_positions():
    torch.manual_seed(0)
    stack = Transformer(CFG, causal=False).eval()
    x = torch.randn(1, 6, 64)
    y = x.clone()
    y[:, -1] += 1.0
    assert not torch.allclose(stack(x)[:, 0], stack(y)[:, 0], atol=1e-4)


def test_padded_rows_equal_rows_run_alone(stack):
    a, b = torch.randn(1, 7, 64), torch.randn(1, 4, 64)
    batch = torch.zeros(2, 7, 64)
    batch[0], batch[1, :4] = a[0], b[0]
    out = stack(batch, lengths=torch.tensor([7, 4]))
    assert torch.allclose(out[0], stack(a)[0], atol=1e-5)
    assert torch.allclose(out[1, :4], stack(b)[0], atol=1e-5)


def test_cached_steps_equal_whole_sequence_for_rows_of_different_lengths(stack):
    """Prefill two rows with prefixes of lengths 5 and 2 into rows 1 and 3 of a 4-row cache, then step."""
    seqs = [torch.randn(9, 64), torch.randn(6, 64)]
    prefix = [5, 2]
    cache = stack.new_cache(capacity=4, max_len=16, device="cpu")
    rows = Rows.of([1, 3])
    batch = torch.zeros(2, 5, 64)
    batch[0, :5], batch[1, :2] = seqs[0][:5], seqs[1][:2]
    stack(batch, lengths=torch.tensor(prefix), cache=cache, rows=rows)
    stepped = [[], []]
    for i in range(4):
        x = torch.stack([seqs[0][5 + i], seqs[1][2 + i]])
        pos, upto = cache.slots(rows)
        h = stack.forward_step(x, cache, rows, pos, upto)
        cache.advance(rows)
        stepped[0].append(h[0])
        stepped[1].append(h[1])
    for r in range(2):
        full = stack(seqs[r][None, : prefix[r] + 4])[0, prefix[r] :]
        assert torch.allclose(torch.stack(stepped[r]), full, atol=1e-5)
    assert cache.lengths.tolist() == [0, 9, 0, 6]


def test_cache_refuses_to_overflow(stack):
    cache = stack.new_cache(capacity=1, max_len=3, device="cpu")
    rows = Rows.of([0])
    stack(torch.randn(1, 3, 64), cache=cache, rows=rows)
    with pytest.raises(ValueError, match="max_len"):
        cache.slots(rows)  # where the next step would write: past max_len
