"""Shared fixtures: tests never download anything and never write into the user's cache."""

import pytest


@pytest.fixture(autouse=True)
def _isolated_data_env(monkeypatch, tmp_path_factory):
    monkeypatch.setenv("SELFSUP_NO_DOWNLOAD", "1")
    monkeypatch.setenv("SELFSUP_CACHE", str(tmp_path_factory.getbasetemp() / "selfsup-cache"))
