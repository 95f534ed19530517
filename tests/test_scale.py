"""The map at scale (issue 22): what the first map of a notebook waits for."""

from __future__ import annotations

import pytest

import datacrafter_widget as dc
from datacrafter_widget.controller import map_service
from datacrafter_widget.loop import m2m


@pytest.mark.parametrize("kernel", [False, True])
def test_layout_compilation_starts_when_a_notebook_opens_a_project_without_a_map(
    tmp_path, monkeypatch: pytest.MonkeyPatch, kernel: bool
) -> None:
    """In a kernel, a project with an embedder and no map yet starts compiling UMAP's kernels at once
    (most of a first map's time), so the map after the display cell needs only its own work; scripts
    and tests start nothing."""
    monkeypatch.setattr(map_service, "_in_kernel", lambda: kernel)
    monkeypatch.setattr(m2m, "_warm_thread", None)
    with dc.DataCrafter(dc.starter.colored_digits(shots=2), models=dc.starter.models(), project=tmp_path / "p"):
        thread = m2m._warm_thread
        assert (thread is not None) is kernel
        if thread is not None:
            thread.join(timeout=300)
            assert not thread.is_alive()
            assert m2m.warm_up() is thread  # once per process
