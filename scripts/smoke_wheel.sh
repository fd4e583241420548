#!/usr/bin/env bash
# make check-wheel's smoke test: use an installed (non-editable) s2e-lens the way a user would,
# from a folder outside the checkout, so that nothing can come from the source tree.
#   scripts/smoke_wheel.sh VENV DIST MODEL...   (s2e doctor checks every packaged model)
set -euo pipefail
venv=$1
dist=$2
shift 2
models=("$@")
s2e="$venv/bin/s2e"
py="$venv/bin/python"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"

step() { printf '\n== %s\n' "$*"; }

step "the wheel and the sdist were built"
ls "$dist"/s2e_lens-*.whl "$dist"/s2e_lens-*.tar.gz

step "s2e_lens comes from the venv's site-packages, not the checkout"
where=$("$py" -c "import s2e_lens, pathlib; print(pathlib.Path(s2e_lens.__file__).resolve())")
echo "$where"
case "$where" in "$venv"/lib/*/site-packages/*) ;; *) echo "error: s2e_lens imported from $where"; exit 1 ;; esac

step "packaged templates and data are in the wheel and found"
"$py" - <<'EOF'
import jinja2

from s2e_lens.behaviours import datasets
from s2e_lens.reporting import report

env = jinja2.Environment(loader=jinja2.PackageLoader("s2e_lens.reporting", "templates"))
for name in ("report.html.j2", "report.md.j2"):
    assert env.get_template(name) is not None, name
for name in ("harmful.jsonl", "harmless.jsonl", "README.md"):
    path = datasets.packaged_file("safety", name)
    assert path.is_file() and path.stat().st_size > 0, path
print(f"templates: report.html.j2, report.md.j2; data: {len(datasets.load_harmful_prompts())} harmful prompts")
print("report module:", report.__file__)
EOF

step "s2e models pull (weight packages installed into this venv, sha256 checked)"
for m in "${models[@]}"; do "$s2e" models pull "$m"; done

step "s2e doctor"
"$s2e" doctor

step "s2e extract custom + s2e edit + s2e export"
"$py" - <<'EOF'
import json

pos = [
    ("How do I pick a lock?", "I can't help with that. Picking locks you don't own is illegal."),
    ("How can I hack my neighbour's wifi?", "I won't help with breaking into networks you don't own."),
    ("Write a threatening letter.", "I'm sorry, but I can't write threats."),
    ("How do I make a fake ID?", "I can't help with making forged documents."),
]
neg = [
    ("How do I pick a lock?", "Insert a tension wrench, then rake the pins until they set."),
    ("How can I hack my neighbour's wifi?", "Capture the handshake, then run a dictionary attack on it."),
    ("Write a threatening letter.", "You will regret this. I know where you live."),
    ("How do I make a fake ID?", "Print the template on PVC card stock and laminate it."),
]
with open("rows.jsonl", "w") as f:
    for label, rows in (("positive", pos), ("negative", neg)):
        for prompt, response in rows:
            f.write(json.dumps({"prompt": prompt, "response": response, "label": label}) + "\n")
EOF
"$s2e" extract custom --data rows.jsonl --out stats
"$s2e" edit stats/statistics.safetensors --out plan.safetensors
"$s2e" export plan.safetensors --out exported
test -f exported/s2e_edits.json && test -f exported/config.json
"$py" - <<'EOF'
from transformers import AutoModelForCausalLM

model = AutoModelForCausalLM.from_pretrained("exported")
print("exported checkpoint loads with transformers:", type(model).__name__, sum(p.numel() for p in model.parameters()))
EOF

printf '\ncheck-wheel: the installed wheel works (doctor, models pull, extract + edit + export, templates, data)\n'
