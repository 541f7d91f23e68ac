"""Unit tests run with one intra-op torch thread: the machines have 2 shared cores, and OpenMP
oversubscription (torch threads + other processes) stalls small kernels for seconds."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
