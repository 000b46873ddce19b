"""The README stays short and starts with the two set-up-included commands; the docs site builds
strictly (no broken link, no page missing from the nav)."""
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
MKDOCS_YML = ROOT / "mkdocs.yml"

README_MAX_LINES = 250
SETUP_COMMANDS = [
    'pip install ".[demo]" && cogenesis demo',
    'pip install ".[test]" && pytest',
]


def _nav_pages(node) -> list[str]:
    """Every page file named in a mkdocs nav (a list of pages, of {title: page} and of {title: [...]})."""
    if isinstance(node, str):
        return [node]
    if isinstance(node, list):
        return [page for item in node for page in _nav_pages(item)]
    if isinstance(node, dict):
        return [page for value in node.values() for page in _nav_pages(value)]
    return []


def _mkdocs_config() -> dict:
    text = MKDOCS_YML.read_text(encoding="utf-8")
    try:
        import yaml  # PyYAML, a dependency of mkdocs
    except ImportError:  # without it: the docs_dir line and the .md files named under nav:
        docs_dir = re.search(r"^docs_dir:\s*(\S+)", text, flags=re.MULTILINE)
        nav = text.split("\nnav:", 1)[1] if "\nnav:" in text else ""
        nav = re.split(r"\n(?=\S)", nav, maxsplit=1)[0]  # up to the next top-level key
        return {"docs_dir": docs_dir.group(1) if docs_dir else "docs",
                "nav": re.findall(r"([\w./-]+\.md)\s*$", nav, flags=re.MULTILINE)}
    return yaml.safe_load(text)


def test_the_docs_site_builds_strictly(tmp_path):
    if importlib.util.find_spec("mkdocs") is None:
        pytest.skip("mkdocs is not installed (it is in the test extra: pip install '.[test]')")
    site = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(MKDOCS_YML),
                           "--site-dir", str(site)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    assert (site / "index.html").is_file()
    for page in sorted(DOCS.glob("*.md")):
        built = site / ("index.html" if page.stem == "index" else f"{page.stem}/index.html")
        assert built.is_file(), f"{page.name} was not built"


def test_the_readme_is_short_and_starts_with_the_two_setup_commands():
    text = README.read_text(encoding="utf-8")
    n_lines = len(text.splitlines())
    assert n_lines <= README_MAX_LINES, f"README.md has {n_lines} lines, more than {README_MAX_LINES}"
    bash_blocks = re.findall(r"^```bash\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)
    assert len(bash_blocks) >= 2, "README.md has fewer than two ```bash blocks"
    assert [block.strip() for block in bash_blocks[:2]] == SETUP_COMMANDS


def test_every_docs_page_is_in_the_nav():
    config = _mkdocs_config()
    assert config.get("docs_dir", "docs") == "docs"
    nav = set(_nav_pages(config.get("nav", [])))
    pages = {page.name for page in DOCS.glob("*.md")}
    assert pages, "docs/ holds no page"
    assert not pages - nav, f"docs pages missing from mkdocs.yml's nav: {sorted(pages - nav)}"
    assert not nav - pages, f"mkdocs.yml's nav names pages that do not exist: {sorted(nav - pages)}"
