import json

import pytest

from looper_utils import answers, data


def _rows(n=50):
    return data.synthetic_problems(n, seed=3, min_steps=1, max_steps=3, max_value=30)


def test_synthetic_is_deterministic_and_distinct():
    a, b = _rows(), _rows()
    assert a == b
    assert len({r["question"] for r in a}) == len(a)
    assert _rows()[0] != data.synthetic_problems(50, seed=4)[0]


def test_synthetic_gold_recomputes_from_annotations():
    from fractions import Fraction
    for r in data.synthetic_problems(500, seed=0, min_steps=1, max_steps=6, max_value=100):
        steps = data.annotations(r["answer"])
        assert 1 <= len(steps) <= 6
        for expr, claimed in steps:
            a, op, b = __import__("re").match(r"(\d+)([-+*/])(\d+)$", expr).groups()
            val = {"+": Fraction(a) + Fraction(b), "-": Fraction(a) - Fraction(b),
                   "*": Fraction(a) * Fraction(b), "/": Fraction(a) / Fraction(b)}[op]
            assert val == Fraction(claimed), (r["id"], expr, claimed)
        assert Fraction(steps[-1][1]) == Fraction(r["gold"])
        assert answers.extract_answer(r["answer"], "strict") == r["gold"]
        assert data.count_steps(r["answer"]) == len(steps)


def test_synthetic_steps_respect_bounds():
    rows = data.synthetic_problems(300, seed=1, min_steps=3, max_steps=4, max_value=50)
    assert {data.count_steps(r["answer"]) for r in rows} == {3, 4}


def test_synthetic_splits_are_disjoint():
    s = data.build_synthetic_splits(400, 100, 80, 80, seed=0, min_steps=1, max_steps=2, max_value=20,
                                    dev_fraction=0.2, split_seed=1)
    qs = {k: {r["question"] for r in v} for k, v in s.items()}
    assert not (qs["train"] & qs["test"]) and not (qs["train"] & qs["platinum"]) and not (qs["dev"] & qs["test"])
    assert len(s["train"]) + len(s["dev"]) == 500 and 60 < len(s["dev"]) < 140


def test_split_is_stable_and_seeded():
    rows = [{"question": f"question number {i}"} for i in range(2000)]
    tr1, dv1 = data.split_train_dev(rows, 0.2, seed=5)
    tr2, dv2 = data.split_train_dev(list(reversed(rows)), 0.2, seed=5)
    assert {r["question"] for r in dv1} == {r["question"] for r in dv2}
    # adding rows does not move old ones
    _, dv3 = data.split_train_dev(rows + [{"question": f"extra {i}"} for i in range(300)], 0.2, seed=5)
    assert {r["question"] for r in dv1} <= {r["question"] for r in dv3}
    _, dv_other = data.split_train_dev(rows, 0.2, seed=6)
    assert {r["question"] for r in dv_other} != {r["question"] for r in dv1}
    assert 0.17 < len(dv1) / 2000 < 0.23


def test_jsonl_roundtrip_is_atomic(tmp_path):
    rows = _rows(5)
    p = data.write_jsonl(tmp_path / "x.jsonl", rows)
    assert data.read_jsonl(p) == rows
    assert [f.name for f in tmp_path.iterdir()] == ["x.jsonl"]  # no temp files left


@pytest.mark.parametrize("line,needle", [
    ('{"id": 1, "question": "q"', "bad JSON"),
    ('{"id": 1, "question": "q", "answer": "#### 3"}', "missing field(s) gold"),
    ('{"id": 1, "question": "q", "answer": "#### 3", "gold": "three"}', "is not a number"),
    ('[1, 2]', "expected a JSON object"),
])
def test_read_jsonl_names_file_and_line(tmp_path, line, needle):
    p = tmp_path / "bad.jsonl"
    good = json.dumps({"id": 0, "question": "q", "answer": "#### 1", "gold": "1"})
    p.write_text(good + "\n\n" + line + "\n")
    with pytest.raises(data.DataError) as exc:
        data.read_jsonl(p)
    assert f"{p}:3:" in str(exc.value) and needle in str(exc.value)


def test_missing_file_names_notebook(tmp_path):
    with pytest.raises(data.DataError, match="01_data"):
        data.read_jsonl(tmp_path / "nope.jsonl")


def test_local_gsm8k_folder_and_platinum_status(tmp_path):
    recs = [{"question": "How many? 2+2", "answer": "2+2=<<2+2=4>>4\n#### 4"},
            {"question": "broken", "answer": "no final line"}]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    rows, problems = data.load_gsm8k(str(tmp_path), "train")
    assert [r["gold"] for r in rows] == ["4"] and len(problems) == 1 and "train" in problems[0]
    plat = [dict(recs[0], cleaning_status=s) for s in ("consensus", "verified", "revised", "rejected")]
    (tmp_path / "plat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in plat))
    prow, pprob, counts = data.load_platinum(str(tmp_path / "plat.jsonl"))
    assert len(prow) == 3 and counts == {"consensus": 1, "verified": 1, "revised": 1, "rejected": 1}
    assert {r["cleaning_status"] for r in prow} == {"consensus", "verified", "revised"}


def test_overlap_finds_exact_and_near():
    train = [{"id": "t1", "question": "Tom has five red apples and buys three more green apples today."},
             {"id": "t2", "question": "Completely different words about a train leaving a station at noon."}]
    other = [{"id": "o1", "question": "tom has five red apples and buys three more green apples today!"},
             {"id": "o2", "question": "Tom has five red apples and buys three more green apples tomorrow."},
             {"id": "o3", "question": "Nothing in common here at all, truly nothing."}]
    ov = data.overlap(train, other, threshold=0.6)
    assert ov["exact"] == 1 and ov["exact_ids"] == ["o1"]
    assert ov["near"] == 2 and {e["id"] for e in ov["near_examples"]} == {"o1", "o2"}


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.8])
def test_overlap_near_duplicates_match_brute_force(threshold):
    """Every question whose best Jaccard with a training question reaches the threshold is found, with that
    best training question: template-made problems, some edited copies of training questions among them."""
    import random

    rows = data.synthetic_problems(400, seed=3)
    train, other = rows[:300], rows[300:]
    rng = random.Random(0)
    for k, r in enumerate(other[:40]):  # near copies: a training question with words added or changed
        words = rng.choice(train)["question"].split()
        if k % 2:
            words += rng.sample(["seven", "blue", "apples", "Sam"], rng.randint(1, 2))
        else:
            for _ in range(rng.randint(1, 4)):
                words[rng.randrange(len(words))] = rng.choice(["seven", "blue", "apples", "Sam"])
        r["question"] = " ".join(words)
    got = {e["id"]: e for e in data.overlap(train, other, threshold)["near_examples"]}
    n_near = data.overlap(train, other, threshold)["near"]
    sh = [data._shingles(t["question"]) for t in train]
    want = {}
    for r in other:
        q = data._shingles(r["question"])
        best = max(len(q & s) / len(q | s) for s in sh)
        if best >= threshold:
            want[r["id"]] = round(best, 3)
    assert n_near == len(want) and len(want) >= 10
    assert all(want[i] == e["jaccard"] for i, e in got.items())


def test_real_gsm8k_loads_and_splits(gsm8k_dir):
    rows, problems = data.load_gsm8k(str(gsm8k_dir), "train")
    test, p2 = data.load_gsm8k(str(gsm8k_dir), "test")
    assert (len(rows), len(test), problems, p2) == (7473, 1319, [], [])
    tr, dv = data.split_train_dev(rows, 0.2, 1234)
    assert 1300 < len(dv) < 1700 and len(tr) + len(dv) == 7473
