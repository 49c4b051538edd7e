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

