"""The documentation site builds without warnings, and every docs code block that claims to run does run.

Convention (stated in docs/install.md): every ```python block in docs/*.md runs; the blocks of one page run in
order, as one script, in a fresh Python process, in an empty temporary folder, offline, under a time limit.
A block directly preceded by a ``<!-- not-run: reason -->`` line is skipped. A ``--8<-- "FILE:SECTION"`` line
(pymdownx.snippets, used to include the README's example) is expanded first, as MkDocs does.
"""
from __future__ import annotations

import importlib.util
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGE_TIMEOUT_S = 300

FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", flags=re.M | re.S)
NOT_RUN = re.compile(r"<!--\s*not-run:\s*(.*?)\s*-->\s*$")
SNIPPET = re.compile(r'^--8<--\s+"([^"]+)"\s*$', flags=re.M)

# Runs before the page's code: no network beyond the loopback interface (the docs promise offline examples).
OFFLINE_GUARD = '''\
def _offline() -> None:
    import socket

    connect = socket.socket.connect

    def loopback_only(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in ("127.0.0.1", "::1", "localhost"):
            raise OSError(f"docs examples run offline; refused a connection to {address!r}")
        return connect(self, address)

    socket.socket.connect = loopback_only


_offline()
'''


def _expand_snippets(text: str) -> str:
    """Replace each ``--8<-- "FILE"`` / ``--8<-- "FILE:SECTION"`` line by what pymdownx.snippets includes."""

    def include(match: re.Match) -> str:
        name, _, section = match.group(1).partition(":")
        source = (ROOT / name).read_text()
        if not section:
            return source
        start = re.search(rf"^.*--8<-- \[start:{re.escape(section)}\].*\n", source, flags=re.M)
        end = re.search(rf"^.*--8<-- \[end:{re.escape(section)}\].*$", source, flags=re.M)
        assert start and end, f"snippet section {section!r} not found in {name}"
        return source[start.end() : end.start()]

    return SNIPPET.sub(include, text)


def _blocks(text: str) -> list[tuple[str, str | None]]:
    """(code, reason it is not run or None) for every ```python block of a page, in order."""
    out = []
    for m in FENCE.finditer(text):
        lang = m.group(1).strip()
        if lang in ("py", "python3", "pycon"):
            raise AssertionError(f"fence ```{lang}: write ```python (runs) so the convention stays one rule")
        if lang != "python":
            continue
        before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        marker = NOT_RUN.search(before)
        if marker is not None and not marker.group(1):
            raise AssertionError("a <!-- not-run: reason --> marker needs its reason")
        out.append((m.group(2), marker.group(1) if marker else None))
    return out


def _pages() -> list[pathlib.Path]:
    return sorted(DOCS.glob("**/*.md"))


def _runnable_pages() -> list[pathlib.Path]:
    return [p for p in _pages() if any(r is None for _, r in _blocks(_expand_snippets(p.read_text())))]


def test_block_extraction_follows_the_convention():
    text = (
        "# t\n\n```python\na = 1\n```\n\n<!-- not-run: a fragment -->\n```python\nb = 2\n```\n\n"
        "```bash\nls\n```\n\nInline ```` ```python ```` is not a fence.\n\n```python\nc = a\n```\n"
    )
    assert _blocks(text) == [("a = 1\n", None), ("b = 2\n", "a fragment"), ("c = a\n", None)]
    with pytest.raises(AssertionError, match="reason"):
        _blocks("<!-- not-run: -->\n```python\nx = 1\n```\n")
    with pytest.raises(AssertionError, match="python"):
        _blocks("```py\nx = 1\n```\n")


def test_snippets_expand_where_the_docs_say():
    pages = [p for p in _pages() if SNIPPET.search(p.read_text())]
    assert any('"README.md:controller"' in p.read_text() for p in pages), (
        "no docs page includes the README's Controller example any more: update this test"
    )
    for page in pages:
        expanded = _expand_snippets(page.read_text())
        assert not SNIPPET.search(expanded)
        if '"README.md:' in page.read_text():
            assert "```python" in expanded


@pytest.mark.parametrize("page", _runnable_pages(), ids=lambda p: str(p.relative_to(DOCS)))
def test_docs_code_blocks_run(page: pathlib.Path, tmp_path: pathlib.Path):
    code = [c for c, reason in _blocks(_expand_snippets(page.read_text())) if reason is None]
    script = tmp_path / "page.py"
    script.write_text(OFFLINE_GUARD + "\n\n".join(code))
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", MPLBACKEND="Agg")
    work = tmp_path / "cwd"
    work.mkdir()
    try:
        proc = subprocess.run([sys.executable, str(script)], cwd=work, env=env, capture_output=True, text=True,
                              timeout=PAGE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the code of docs/{page.relative_to(DOCS)} ran over {PAGE_TIMEOUT_S} s")
    assert proc.returncode == 0, (
        f"docs/{page.relative_to(DOCS)}: its code blocks failed (exit {proc.returncode})\n"
        f"--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-6000:]}"
    )


def test_mkdocs_build_strict(tmp_path: pathlib.Path):
    missing = [m for m in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python")
               if importlib.util.find_spec(m.split(".")[0]) is None
               or (m == "mkdocstrings_handlers.python" and importlib.util.find_spec(m) is None)]
    if missing:
        pytest.skip(f"the docs tools are not installed ({', '.join(missing)}); scripts/install.sh installs them")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"), "-d", str(tmp_path / "site")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=PAGE_TIMEOUT_S,
    )
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    assert (tmp_path / "site" / "api" / "index.html").read_text().count('class="doc doc-heading"') >= 20, (
        "the API reference lost its generated entries"
    )
