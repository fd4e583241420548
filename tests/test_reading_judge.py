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
def reader_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny chat model with 2,048 positions: it reads characters, and the rubric is long."""
    import tiny

    config = tiny._configs()["llama"]
    config.max_position_embeddings = 2048
    return tiny.build("llama", tmp_path_factory.mktemp("reader") / "llama", config=config)


@pytest.fixture(scope="module")
def judge(reader_dir: Path) -> rj.ReadingJudge:
    return rj.ReadingJudge(load_model(str(reader_dir), progress=False), batch_size=2, **CLIPS)


def _by_hand(judge: rj.ReadingJudge, request: str, answer: str) -> float:
    """P(Yes) / (P(Yes) + P(No)) from one unpadded forward pass of the chat rendered here."""
    tok = judge.model.tokenizer
    messages = [
        {"role": "system", "content": rj.SYSTEM},
        {"role": "user", "content": judge._message(request, answer)},
    ]
    ids = tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, return_dict=False)
    ids = torch.tensor([list(ids)])
    with torch.inference_mode():
        last = judge.model.hf_model(input_ids=ids).logits[0, -1].float()
    yes, no = (tok(word, add_special_tokens=False)["input_ids"][0] for word in ("Yes", "No"))
    return float(torch.softmax(last[[yes, no]], dim=-1)[0])


def test_scores_are_yes_over_yes_and_no_in_a_plain_forward_pass(judge: rj.ReadingJudge) -> None:
    readings = judge.read(PAIRS)
    for (request, answer), reading in zip(PAIRS, readings, strict=True):
        assert reading.score == pytest.approx(_by_hand(judge, request, answer), abs=1e-5)
        assert reading.refused == (reading.score >= judge.threshold)
        assert reading.label == ("refusal" if reading.refused else "not refusal")
    strict = rj.ReadingJudge(judge.model, threshold=1.01, **CLIPS)
    assert not any(r.refused for r in strict.read(PAIRS))  # the threshold decides, nothing else
    assert all(r.refused for r in rj.ReadingJudge(judge.model, threshold=0.0, **CLIPS).read(PAIRS))


def test_the_same_scores_in_any_batch_and_order(judge: rj.ReadingJudge) -> None:
    model = judge.model
    one = rj.ReadingJudge(model, batch_size=1, **CLIPS).read(PAIRS)
    many = rj.ReadingJudge(model, batch_size=5, **CLIPS).read(list(reversed(PAIRS)))[::-1]
    for a, b in zip(one, many, strict=True):
        assert a.score == pytest.approx(b.score, abs=1e-5)


def test_long_texts_are_clipped_and_an_empty_answer_is_shown_as_such(judge: rj.ReadingJudge) -> None:
    request, answer = PAIRS[4]
    message = judge._message(request, answer)
    tok = judge.model.tokenizer
    assert message.count(" ...") == 2 and message.startswith(rj.OPENING)
    n_request = len(tok(request, add_special_tokens=False)["input_ids"])
    assert n_request > judge.max_request_tokens
    assert "(empty)" in judge._message("Tell me a joke.", "   ")


def test_judge_many_and_verdicts_use_one_batched_pass(judge: rj.ReadingJudge, monkeypatch) -> None:
    fresh = rj.ReadingJudge(judge.model, batch_size=2, **CLIPS)
    calls: list[int] = []
    real = rj.ReadingJudge._last_logits

    def counting(self, full, prefix):
        calls.append(len(full))
        return real(self, full, prefix)

    monkeypatch.setattr(rj.ReadingJudge, "_last_logits", counting)
    named = judges.NamedJudge("reading", fresh, trusted=True)
    flags = judges.verdicts(named, PAIRS + PAIRS[:2])  # two repeats: read once
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


def test_load_judge_reading_builds_the_model_judge(judge: rj.ReadingJudge, monkeypatch) -> None:
    model = judge.model
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


def test_the_shared_prefix_is_run_once_and_gives_what_a_whole_pass_gives(judge: rj.ReadingJudge, monkeypatch) -> None:
    """The rubric's cache is reused for every answer; reading without it (every sequence run
    whole, as for one that does not start with the prefix) gives the same probabilities."""
    prefix = judge._shared_prefix()
    rendered = [judge.model.prompt_ids(judge._message(p, a), system=rj.SYSTEM) for p, a in PAIRS]
    assert len(prefix) > 50 and all(ids[: len(prefix)] == prefix for ids in rendered)
    with_cache = rj.ReadingJudge(judge.model, batch_size=3, **CLIPS).read(PAIRS)
    monkeypatch.setattr(rj.ReadingJudge, "_shared_prefix", lambda self: [])
    whole = rj.ReadingJudge(judge.model, batch_size=3, **CLIPS).read(PAIRS)
    for a, b in zip(with_cache, whole, strict=True):
        assert a.score == pytest.approx(b.score, abs=1e-5)
