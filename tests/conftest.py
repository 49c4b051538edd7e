import os
import pathlib
import sys

import pytest
import torch

sys.path.insert(0, str(pathlib.Path(__file__).parent))  # tests/helpers.py


@pytest.fixture(autouse=True, scope="session")
def _cache(tmp_path_factory):
    # Tests train into their own cache so that they never depend on what a user has cached.
    os.environ["NVCIM_CACHE"] = str(tmp_path_factory.mktemp("nvcim-cache"))
    torch.set_num_threads(min(2, torch.get_num_threads()))



@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """An empty inductor cache, and so an empty kernel ledger (nvcim.chip.kernel_cache), for one test, in its
    process and the processes it starts: tests of the background compile must not find kernels that an
    earlier run on this machine compiled."""
    from nvcim.chip import compiling, kernel_cache

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    kernel_cache.forget()
    compiling._compiled_kernel.cache_clear()
    yield tmp_path / "inductor"
    kernel_cache.forget()
    compiling._compiled_kernel.cache_clear()
