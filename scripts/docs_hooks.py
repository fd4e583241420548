"""mkdocs hooks: the repository's figures/ folder is served under figures/ in the site, so the
pages show the committed images without a copy of them in docs/; and the Sphinx roles of the
docstrings (``:func:`name```) render as the name in code, without the role's prefix."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

FIGURES = Path(__file__).resolve().parents[1] / "figures"  # scripts/ sits beside figures/
ROLE = re.compile(r":(?:func|class|mod|meth|data|attr|exc|obj):(<code>)")


def on_files(files: Files, config: Any) -> Files:
    for path in sorted(FIGURES.rglob("*.png")):
        rel = path.relative_to(FIGURES.parent).as_posix()
        files.append(File.generated(config, rel, abs_src_path=str(path)))
    return files


def on_page_content(html: str, **kwargs: Any) -> str:
    return ROLE.sub(r"\1", html)
