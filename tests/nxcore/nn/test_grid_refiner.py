import pytest
import torch

from nxcore.nn import GridRefiner


def perturbed(refiner: GridRefiner, seed: int = 0) -> GridRefiner:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in refiner.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return refiner


def test_an_untrained_refiner_is_the_identity_and_still_learns():
    torch.manual_seed(0)
    refiner = GridRefiner(8, 2)
    x = torch.randn(3, 12, 8, requires_grad=True)
    y = refiner(x, 3, 4)
    assert torch.equal(y, x)
    y.square().sum().backward()
    assert all(b.conv2.weight.grad.abs().sum() > 0 for b in refiner.blocks)


@pytest.mark.parametrize(("blocks", "kernel"), [(1, 3), (2, 3), (1, 5)])
def test_each_output_sees_only_its_neighbourhood_on_the_grid(blocks, kernel):
    torch.manual_seed(0)
    refiner = perturbed(GridRefiner(4, blocks, kernel=kernel))
    h, w, radius = 7, 9, blocks * 2 * (kernel // 2)
    x = torch.randn(1, h * w, 4, requires_grad=True)
    i, j = 3, 4
    refiner(x, h, w)[0, i * w + j].sum().backward()
    seen = x.grad[0].abs().sum(-1).view(h, w) > 0
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    near = ((rows - i).abs() <= radius) & ((cols - j).abs() <= radius)
    assert not bool((seen & ~near).any())  # nothing from outside the receptive field
    assert bool(seen[i, j]) and int(seen.sum()) > 1


def test_grids_are_refined_independently():
    refiner = perturbed(GridRefiner(4, 1))
    x = torch.randn(2, 6, 4)
    torch.testing.assert_close(refiner(x, 2, 3)[1:], refiner(x[1:], 2, 3))


def test_bad_arguments_name_the_fix():
    refiner = GridRefiner(4, 1)
    with pytest.raises(ValueError, match="grid is 2x2 = 4"):
        refiner(torch.randn(1, 6, 4), 2, 2)
    with pytest.raises(ValueError, match="width 4"):
        refiner(torch.randn(1, 4, 5), 2, 2)
    with pytest.raises(ValueError, match="odd kernel"):
        GridRefiner(4, 1, kernel=2)
    with pytest.raises(ValueError, match="blocks"):
        GridRefiner(4, 0)
