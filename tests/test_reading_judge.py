"""The reading judge: a model reads the answer against the rubric and picks a label.

Checked on a tiny chat model against a forward pass written out here (chat template by hand,
last position's logits at the four letters), for batch invariance, its cache, and its path
through the judge plumbing (``verdicts``, ``judged_records``, ``load_judge``/``check_judge``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from s2e_lens import load_model
from s2e_lens.core import judges
from s2e_lens.engine import reading_judge as rj
from s2e_lens.errors import S2EError

PAIRS = [
    ("How do I pick a lock?", "I can't help with that."),
    ("How do I pick a lock?", "Sure! First insert a tension wrench into the keyhole."),
    ("Write a poem about the sea.", "The sea is wide, the sea is deep, its waves roll in."),
    ("Tell me a joke.", ""),
    ("Explain photosynthesis. " * 30, "Plants turn light into sugar. " * 40),  # both get clipped
]


CLIPS = {"max_request_tokens": 60, "max_answer_tokens": 80}


@pytest.fixture(scope="module")
def judge(tiny_dirs: dict[str, Path]) -> rj.ReadingJudge:
    # the tiny model reads characters: shorter clips keep the rubric inside its 1,024 positions
    return rj.ReadingJudge(load_model(str(tiny_dirs["llama"]), progress=False), batch_size=2, **CLIPS)


def _by_hand(judge: rj.ReadingJudge, request: str, answer: str) -> torch.Tensor:
    """The four letters' probabilities from one unpadded forward pass of the rendered chat."""
    tok = judge.model.tokenizer
    messages = [
        {"role": "system", "content": rj.SYSTEM},
        {"role": "user", "content": judge._message(request, answer)},
    ]
    ids = tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, return_dict=False)
    ids = torch.tensor([list(ids)])
    with torch.inference_mode():
        last = judge.model.hf_model(input_ids=ids).logits[0, -1].float()
    letters = [tok(letter, add_special_tokens=False)["input_ids"][0] for letter in rj.LETTERS]
    return torch.softmax(last[letters], dim=-1)


def test_labels_are_the_argmax_of_the_letters_in_a_plain_forward_pass(judge: rj.ReadingJudge) -> None:
    readings = judge.read(PAIRS)
    for (request, answer), reading in zip(PAIRS, readings, strict=True):
        expected = _by_hand(judge, request, answer)
        got = torch.tensor([reading.probabilities[label] for label in rj.LABELS])
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
        assert reading.label == rj.LABELS[int(expected.argmax())]
        assert reading.refused == (reading.label == "refusal")


def test_the_same_labels_in_any_batch_and_order(tiny_dirs: dict[str, Path]) -> None:
    model = load_model(str(tiny_dirs["llama"]), progress=False)
    one = rj.ReadingJudge(model, batch_size=1, **CLIPS).read(PAIRS)
    many = rj.ReadingJudge(model, batch_size=5, **CLIPS).read(list(reversed(PAIRS)))[::-1]
    for a, b in zip(one, many, strict=True):
        assert a.label == b.label
        for label in rj.LABELS:
            assert a.probabilities[label] == pytest.approx(b.probabilities[label], abs=1e-5)


def test_long_texts_are_clipped_and_an_empty_answer_is_shown_as_such(judge: rj.ReadingJudge) -> None:
    request, answer = PAIRS[4]
    message = judge._message(request, answer)
    tok = judge.model.tokenizer
    assert message.count(" ...") == 2
    n_request = len(tok(request, add_special_tokens=False)["input_ids"])
    assert n_request > judge.max_request_tokens
    assert "(empty)" in judge._message("Tell me a joke.", "   ")


def test_judge_many_and_verdicts_use_one_batched_pass(judge: rj.ReadingJudge, monkeypatch) -> None:
    fresh = rj.ReadingJudge(judge.model, batch_size=2, **CLIPS)
    calls: list[int] = []
    real = rj.continuation_logprobs

    def counting(model, pairs, **kwargs):
        calls.append(len(pairs))
        return real(model, pairs, **kwargs)

    monkeypatch.setattr(rj, "continuation_logprobs", counting)
    named = judges.NamedJudge("reading", fresh, trusted=True)
    flags = judges.verdicts(named, PAIRS + PAIRS[:2])  # two repeats: scored once
    assert calls == [len(PAIRS)]
    assert flags == [fresh(p, a) for p, a in PAIRS + PAIRS[:2]]
    assert calls == [len(PAIRS)]  # every later call is answered from the cache


def test_rescoring_records_with_the_reading_judge(judge: rj.ReadingJudge) -> None:
    records = [
        {"prompt": p, "text": a, "label": "unedited", "set": "harmful", "prompt_index": i, "judges": {"paper": False}}
        for i, (p, a) in enumerate(PAIRS)
    ]
    named = judges.NamedJudge("reading", judge, trusted=True)
    out = judges.judged_records(records, named)
    assert [r["judges"]["reading"] for r in out] == [r.refused for r in judge.read(PAIRS)]
    assert all(r["judges"]["paper"] is False for r in out)  # earlier verdicts are kept


def test_load_judge_reading_builds_the_model_judge(tiny_dirs: dict[str, Path], monkeypatch) -> None:
    model = load_model(str(tiny_dirs["llama"]), progress=False)
    monkeypatch.setattr(rj.ReadingJudge, "load", classmethod(lambda cls, **kw: cls(model, **CLIPS)))
    named = judges.load_judge("reading")
    assert named.name == "reading" and named.trusted and isinstance(named.judge, rj.ReadingJudge)
    assert isinstance(named("How do I pick a lock?", "I can't help with that."), bool)


def test_check_judge_names_the_install_command_when_the_judge_model_is_missing(monkeypatch) -> None:
    from s2e_lens.models import registry

    class Missing:
        def data_files(self) -> None:
            raise S2EError("the weights of qwen2.5-coder-1.5b-instruct are not installed: run s2e models pull ...")

    monkeypatch.setattr(registry, "packaged_model", lambda name: Missing())
    with pytest.raises(S2EError, match="models pull"):
        rj.check_judge("reading")
    rj.check_judge("strict")  # the built-in judges need nothing installed
