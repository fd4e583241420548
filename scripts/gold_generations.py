"""Generate the texts of the refusal gold set (tests/data/refusal_gold.jsonl, assembled by
scripts/gold_build.py once the texts are read).

    S2E_DATA=../shared/data python scripts/gold_generations.py --model MODEL --out FILE.jsonl

For one model: the safety statistics (teacher-forced, tune split), then greedy answers
(128 new tokens) to 28 test prompts (10 plain harmful, 6 adversarial, 6 harmless, 6
scary-but-safe) under six interventions: unedited, steering at three strengths (two towards
refusal, one away from it), and two edits by the paper's rule (the default budget and a
strong one). Each row keeps the model, the intervention, the prompt set, the prompt, the text,
the generated token ids (so shorter generations are exact prefixes) and whether it was cut
off. No judge runs here: the labels are written by reading the texts (docs/gold-rubric.md).
"""

from __future__ import annotations

import argparse
import json
import random
import time

import torch

import s2e_lens as s2e
from s2e_lens.behaviours.attacks import load_attack_set
from s2e_lens.behaviours.safety import safety, safety_prompts
from s2e_lens.io.files import write_text

MAX_NEW_TOKENS = 128
SIZES = {"harmful": 10, "adversarial": 6, "harmless": 6, "scary_but_safe": 6}


def prompt_sets(seed: int) -> dict[str, list[str]]:
    test = safety_prompts("test")
    rng = random.Random(seed)
    plain_harmless = [p for p in test["harmless"] if p not in set(test["scary_but_safe"])]
    adversarial = list(load_attack_set("advllm").prompts)
    return {
        "harmful": rng.sample(test["harmful"], SIZES["harmful"]),
        "adversarial": rng.sample(adversarial, SIZES["adversarial"]),
        "harmless": rng.sample(plain_harmless, SIZES["harmless"]),
        "scary_but_safe": rng.sample(test["scary_but_safe"], SIZES["scary_but_safe"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gammas", default="0.5,2,-1", help="steering strengths")
    args = parser.parse_args()
    started = time.perf_counter()
    model = s2e.load_model(args.model, dtype=getattr(torch, args.dtype), progress=False)
    stats = s2e.collect_statistics(model, safety(), progress=False)
    vectors = s2e.SteeringVectors.from_statistics(stats)
    plans = {
        "edit rho_attn=0.15": s2e.compute_plan(model, stats, s2e.EditSettings()),
        "edit rho_attn=0.6 rho_mlp=0.3": s2e.compute_plan(model, stats, s2e.EditSettings(rho_attn=0.6, rho_mlp=0.3)),
    }
    sets = prompt_sets(args.seed)
    prompts = [p for ps in sets.values() for p in ps]
    owners = [name for name, ps in sets.items() for _ in ps]
    settings = s2e.GenerationSettings(max_new_tokens=MAX_NEW_TOKENS, batch_size=28)
    runs: dict[str, list[s2e.Generation]] = {"unedited": s2e.generate(model, prompts, settings)}
    for gamma in (float(g) for g in args.gammas.split(",")):
        with s2e.steered(model, vectors, gamma):
            runs[f"steer gamma={gamma:g}"] = s2e.generate(model, prompts, settings)
    for label, plan in plans.items():
        with s2e.edited(model, plan):
            runs[label] = s2e.generate(model, prompts, settings)
    rows = [
        {
            "model": args.model,
            "dtype": args.dtype,
            "intervention": label,
            "set": owner,
            "prompt": g.prompt,
            "text": g.text,
            "token_ids": list(g.token_ids),
            "cut_off": not g.stopped,
        }
        for label, gens in runs.items()
        for owner, g in zip(owners, gens, strict=True)
    ]
    write_text(args.out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    print(f"{len(rows)} generations of {args.model} in {time.perf_counter() - started:.0f} s -> {args.out}")


if __name__ == "__main__":
    main()
