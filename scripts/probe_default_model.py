"""The README's two probes of the default model: MaliciousInstruct refusals (greedy, 32 new
tokens, substring judge) and GSM8K accuracy and solution lengths (greedy, 256 new tokens).

Run: S2E_DATA=../shared/data OMP_WAIT_POLICY=PASSIVE .venv/bin/python scripts/probe_default_model.py
"""

from __future__ import annotations

import time

import s2e_lens as s2e
from s2e_lens.behaviours import datasets
from s2e_lens.core import metrics
from s2e_lens.engine.generation import GenerationSettings, generate


def main() -> None:
    model = s2e.load_model(progress=False)
    started = time.time()
    prompts = datasets.load_malicious_instruct()[:100]
    gens = generate(model, prompts, GenerationSettings(max_new_tokens=32, batch_size=50))
    refused = sum(metrics.is_refusal(g.text) for g in gens)
    degenerate = sum(metrics.is_degenerate(g.text) for g in gens)
    print(
        f"MaliciousInstruct: {refused}/{len(prompts)} refused (greedy, 32 tokens); {degenerate} degenerate; "
        f"{time.time() - started:.0f} s"
    )
    for g in gens[:3]:
        print("  ", repr(g.text[:120]))
    started = time.time()
    items = datasets.load_gsm8k()[:30]
    template = "{question}\nSolve step by step and end with 'The answer is N.'"
    gens = generate(
        model,
        [template.format(question=it.question) for it in items],
        GenerationSettings(max_new_tokens=256, batch_size=30),
    )
    correct = sum(metrics.answer_correct(g.text, it.answer) for g, it in zip(gens, items, strict=True))
    lengths = sorted(g.n_tokens for g in gens)
    print(
        f"GSM8K: {correct}/{len(items)} correct; generated tokens median {lengths[len(lengths) // 2]}, "
        f"min {lengths[0]}, max {lengths[-1]}; {sum(g.stopped for g in gens)} reached EOS; "
        f"{time.time() - started:.0f} s"
    )
    print("  ", repr(gens[0].text[:300]))


if __name__ == "__main__":
    main()
