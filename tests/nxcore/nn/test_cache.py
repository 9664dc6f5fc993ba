import pytest
import torch

from nxcore.nn import KVCache


def kv(batch=2, heads=3, new=4, head_dim=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, heads, new, head_dim)
    return torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)


def test_append_returns_everything_so_far():
    cache = KVCache(2, 3, 10, 5)
    k1, v1 = kv(new=4, seed=1)
    k2, v2 = kv(new=1, seed=2)
    keys, values = cache.append(k1, v1)
    torch.testing.assert_close(keys, k1)
    keys, values = cache.append(k2, v2)
    torch.testing.assert_close(keys, torch.cat([k1, k2], dim=2))
    torch.testing.assert_close(values, torch.cat([v1, v2], dim=2))
    assert cache.length == len(cache) == 5
    torch.testing.assert_close(cache.keys, keys)
    assert (cache.batch, cache.num_kv_heads, cache.max_len, cache.head_dim) == (2, 3, 10, 5)


def test_crop_forgets_the_tail_and_reset_empties():
    cache = KVCache(2, 3, 10, 5)
    k1, v1 = kv(new=4, seed=1)
    cache.append(k1, v1)
    cache.append(*kv(new=3, seed=2))
    cache.crop(4)
    k3, v3 = kv(new=2, seed=3)
    keys, values = cache.append(k3, v3)
    torch.testing.assert_close(keys, torch.cat([k1, k3], dim=2))
    torch.testing.assert_close(values, torch.cat([v1, v3], dim=2))
    cache.reset()
    assert cache.length == 0 and cache.keys.shape == (2, 3, 0, 5)


def test_reorder_follows_the_index():
    cache = KVCache(3, 1, 4, 2)
    k, v = kv(batch=3, heads=1, new=2, head_dim=2)
    cache.append(k, v)
    cache.reorder(torch.tensor([2, 2, 0]))
    torch.testing.assert_close(cache.keys, k[[2, 2, 0]])
    torch.testing.assert_close(cache.values, v[[2, 2, 0]])


def test_dtype_and_device():
    cache = KVCache(1, 1, 2, 2, dtype=torch.bfloat16, device="cpu")
    assert cache.dtype == torch.bfloat16 and cache.device == torch.device("cpu")
    assert "length=0" in repr(cache)


def test_overflow_says_how_large_to_build_it():
    cache = KVCache(2, 3, 6, 5)
    cache.append(*kv(new=4))
    with pytest.raises(
        ValueError,
        match=r"KVCache overflow: it holds 4 of max_len=6 slots and cannot take 4 more; build it with max_len >= 8",
    ):
        cache.append(*kv(new=4))
    assert cache.length == 4


@pytest.mark.parametrize(
    ("k", "v", "error", "message"),
    [
        (
            torch.randn(1, 3, 2, 5),
            torch.randn(1, 3, 2, 5),
            ValueError,
            r"k has shape \(1, 3, 2, 5\) but this cache holds \[batch=2, kv_heads=3",
        ),
        (
            torch.randn(2, 3, 2, 5),
            torch.randn(2, 3, 2, 4),
            ValueError,
            r"v has shape \(2, 3, 2, 4\) but this cache holds",
        ),
        (torch.randn(2, 3, 2, 5), torch.randn(2, 3, 1, 5), ValueError, "k has 2 new tokens but v has 1"),
        (
            torch.randn(2, 3, 2, 5).double(),
            torch.randn(2, 3, 2, 5).double(),
            TypeError,
            "k has dtype torch.float64 but the cache stores torch.float32",
        ),
        (torch.randn(2, 3, 5), torch.randn(2, 3, 5), ValueError, "k must have 4 dimensions"),
    ],
)
def test_bad_appends(k, v, error, message):
    with pytest.raises(error, match=message):
        KVCache(2, 3, 8, 5).append(k, v)


@pytest.mark.parametrize(
    ("action", "error", "message"),
    [
        (
            lambda c: c.crop(3),
            ValueError,
            r"cannot crop the KVCache to length 3: it holds only 2 slots; pass a length in \[0, 2\]",
        ),
        (lambda c: c.crop(-1), ValueError, "length must be an int >= 0, got -1"),
        (
            lambda c: c.reorder(torch.tensor([0, 2])),
            ValueError,
            r"index must be in \[0, 2\), got values from 0 to 2",
        ),
        (lambda c: c.reorder(torch.tensor([0])), ValueError, "index has 1 entries but the cache has batch=2"),
        (lambda c: c.reorder(torch.tensor([0.0, 1.0])), TypeError, "index must have an integer dtype"),
    ],
)
def test_bad_crop_and_reorder(action, error, message):
    cache = KVCache(2, 3, 8, 5)
    cache.append(*kv(new=2))
    with pytest.raises(error, match=message):
        action(cache)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"max_len": 0}, ValueError, "max_len must be an int >= 1, got 0"),
        ({"batch": 2.0}, TypeError, r"batch must be an int, got 2.0"),
        (
            {"dtype": torch.int64},
            TypeError,
            r"dtype must be a floating-point torch.dtype \(e.g. torch.bfloat16\), got torch.int64",
        ),
    ],
)
def test_bad_construction(kwargs, error, message):
    args = {"batch": 1, "num_kv_heads": 1, "max_len": 4, "head_dim": 2} | kwargs
    dtype = args.pop("dtype", torch.float32)
    with pytest.raises(error, match=message):
        KVCache(**args, dtype=dtype)
