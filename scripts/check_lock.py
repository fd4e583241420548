"""Every file requirements.lock pins is served by the public index, under the hash the lock gives.

    python scripts/check_lock.py [requirements.lock] [--index https://pypi.org/simple]

For each pinned ``name==version``, the index's JSON page (PEP 691) lists that release's files
with their sha256; each ``--hash`` of the lock must be one of them. Nothing is downloaded but
the index pages. Standard library only. Exit code 1 names every hash the index does not serve.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^ ;\\]+)")
HASH = re.compile(r"--hash=sha256:([0-9a-f]{64})")


def pins(text: str) -> list[tuple[str, str, set[str]]]:
    """(name, version, hashes) for each requirement of a hashed requirements file.

    >>> pins("a==1.0 ; sys_platform == 'darwin' \\\\\\n    --hash=sha256:" + "0" * 64 + "\\n    # via b\\n")
    [('a', '1.0', {'0000000000000000000000000000000000000000000000000000000000000000'})]
    """
    out: list[tuple[str, str, set[str]]] = []
    for block in re.split(r"\n(?=[A-Za-z0-9])", text.replace("\\\n", " ")):
        match = PIN.match(block)
        if match:
            out.append((match[1], match[2], set(HASH.findall(block.split("\n", 1)[0]))))
    return out


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def file_version(filename: str) -> str:
    """The version in a wheel's or an sdist's file name.

    >>> file_version("torch-2.13.0-cp311-cp311-manylinux_2_28_x86_64.whl"), file_version("jax-0.4.1.tar.gz")
    ('2.13.0', '0.4.1')
    """
    if filename.endswith(".whl"):
        return filename.split("-")[1]
    stem = re.sub(r"\.(tar\.gz|tar\.bz2|zip|tgz)$", "", filename)
    return stem.rsplit("-", 1)[-1]


def served(index: str, name: str, version: str) -> set[str]:
    """sha256 of every file the index serves for this release."""
    url = f"{index.rstrip('/')}/{normalise(name)}/"
    request = urllib.request.Request(url, headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        page = json.load(response)
    return {
        f["hashes"]["sha256"]
        for f in page["files"]
        if "sha256" in f.get("hashes", {}) and file_version(f["filename"]) == version
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("lock", nargs="?", default="requirements.lock")
    parser.add_argument("--index", default="https://pypi.org/simple")
    args = parser.parse_args(argv)
    entries = pins(Path(args.lock).read_text())
    if not entries:
        print(f"error: no pinned requirements in {args.lock}", file=sys.stderr)
        return 1
    with ThreadPoolExecutor(8) as pool:
        pages = list(pool.map(lambda e: served(args.index, e[0], e[1]), entries))
    missing = [(n, v, h) for (n, v, hashes), ok in zip(entries, pages, strict=True) for h in sorted(hashes - ok)]
    unhashed = [n for n, _, hashes in entries if not hashes]
    for name, version, digest in missing:
        print(f"error: {name}=={version}: sha256:{digest} is not served by {args.index}", file=sys.stderr)
    for name in unhashed:
        print(f"error: {name} has no hash in {args.lock}", file=sys.stderr)
    if missing or unhashed:
        return 1
    n_files = sum(len(h) for _, _, h in entries)
    print(f"check_lock: all {n_files} files of {len(entries)} pins in {args.lock} are served by {args.index}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
