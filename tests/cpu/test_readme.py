"""The README's Python snippets run as written (each in a fresh namespace, in order)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"
SNIPPETS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_the_readme_has_python_snippets() -> None:
    assert len(SNIPPETS) >= 3


@pytest.mark.parametrize("index", range(len(SNIPPETS)))
def test_snippet_runs_as_written(index: int, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("DDPM_RT_CACHE", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    exec(compile(SNIPPETS[index], f"README.md python snippet {index + 1}", "exec"), {"__name__": "readme"})
