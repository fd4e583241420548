"""mkdocs hook: the repository's figures/ folder is served under figures/ in the site, so the
pages show the committed images without a copy of them in docs/."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

FIGURES = Path(__file__).resolve().parents[1] / "figures"


def on_files(files: Files, config: Any) -> Files:
    for path in sorted(FIGURES.rglob("*.png")):
        rel = path.relative_to(FIGURES.parent).as_posix()
        files.append(File.generated(config, rel, abs_src_path=str(path)))
    return files
