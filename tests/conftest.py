"""Shared fixtures: tests never download anything and never write into the user's cache."""

import pytest


@pytest.fixture(autouse=True)
def _isolated_data_env(monkeypatch, tmp_path_factory):
    monkeypatch.setenv("SELFSUP_NO_DOWNLOAD", "1")
    monkeypatch.setenv("SELFSUP_CACHE", str(tmp_path_factory.getbasetemp() / "selfsup-cache"))


@pytest.fixture
def one_thread():
    """Tests of many tiny tensor ops and backward passes: one torch thread is up to 20x faster than two on a busy
    2-core CPU. Use with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
