import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One torch thread per test module: these tiny models run many small ops, which a second thread
    (shared with other work on a 2-core machine) slows down instead of speeding up."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
