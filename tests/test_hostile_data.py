"""Hostile parameters and data files: a bad value or a corrupt file stops the run, with its key or its
file and line, before anything a user made is overwritten. Each test fails on the code before the fix."""
from __future__ import annotations

import errno
import hashlib
import json
import threading
from pathlib import Path

import pytest

from looper_utils import config, data, evaluation


# ---- parameters out of range ------------------------------------------------------------

@pytest.mark.parametrize("stage, params, says", [
    ("sft", dict(epochs=-1), "sft.epochs=-1.0 with sft.max_steps=-1 trains nothing"),
    ("sft", dict(epochs=0), "sft.epochs=0.0 with sft.max_steps=-1 trains nothing"),
    ("data", dict(n_train=-1000), "data.n_train=-1000 is out of range: it must be >= 1 for synthetic data"),
    ("data", dict(n_platinum=0), "data.n_platinum=0 is out of range: it must be >= 1"),
    ("ppo", dict(iterations=0), "ppo.iterations=0 is out of range: it must be >= 1"),
    ("ppo", dict(prompts_per_iter=0), "ppo.prompts_per_iter=0 is out of range: it must be >= 1"),
    ("ppo", dict(minibatch_size=0), "ppo.minibatch_size=0 is out of range: it must be >= 1"),
    ("ppo", dict(save_every=0), "ppo.save_every=0 is out of range: it must be >= 1"),
    ("ppo", dict(learning_rate=0), "ppo.learning_rate=0.0 is out of range: it must be > 0"),
    ("ppo", dict(temperature=-0.5), "ppo.temperature=-0.5 is out of range: it must be >= 0"),
    ("rollouts", dict(k=0), "rollouts.k=0 is out of range: it must be >= 1"),
    ("rollouts", dict(top_p=1.5), "rollouts.top_p=1.5 is out of range: it must be between 0 and 1"),
    ("rollouts", dict(max_new_tokens=0), "rollouts.max_new_tokens=0 is out of range: it must be >= 1"),
    ("sft", dict(batch_size=0), "sft.batch_size=0 is out of range: it must be >= 1"),
    ("sft", dict(learning_rate=-3e-3), "sft.learning_rate=-0.003 is out of range: it must be > 0"),
    ("eval", dict(batch_size=-4), "eval.batch_size=-4 is out of range: it must be >= 1"),
    ("eval", dict(top_p=-0.1), "eval.top_p=-0.1 is out of range: it must be between 0 and 1"),
    ("eval", dict(seed=-1), "seed=-1 is out of range: it must be a whole number from 0 to 4294967295"),
    ("ppo", dict(seed=2**32), "seed=4294967296 is out of range"),
])
def test_parameters_out_of_range_name_the_key_and_the_range(stage, params, says):
    with pytest.raises(ValueError) as exc:
        config.build("smoke", stage=stage, **params)
    assert says in str(exc.value) and "Fix the parameter" in str(exc.value)


def test_every_problem_is_reported_at_once():
    with pytest.raises(ValueError) as exc:
        config.build("smoke", stage="ppo", iterations=0, k=0, **{"sft.epochs": 0})
    msg = str(exc.value)
    assert "ppo.iterations=0" in msg and "ppo.k=0" in msg and "sft.epochs=0.0" in msg


def test_values_at_the_edge_of_their_range_pass():
    cfg = config.build("smoke", stage="sft", epochs=0, max_steps=5, seed=0,
                       **{"rollouts.temperature": 0.0, "rollouts.top_p": 1.0, "ppo.iterations": 1, "eval.n_eval": 0})
    assert (cfg.sft.epochs, cfg.sft.max_steps, cfg.ppo.iterations) == (0.0, 5, 1)
    # real GSM8K ignores the synthetic sizes, so they are not checked there
    assert config.build("full", **{"data.n_train": 0}).data.n_train == 0


def test_a_profile_file_with_a_bad_value_names_the_file_and_the_key(tmp_path):
    p = tmp_path / "mine.json"
    p.write_text(json.dumps({"profile": "smoke", "overrides": {"ppo.k": 0}}))
    with pytest.raises(ValueError, match=rf"{p}: ppo.k=0 is out of range: it must be >= 1"):
        config.build(str(p))


# ---- reading a split: encodings, duplicate ids, absurd golds -----------------------------

def _line(i, **over):
    return json.dumps({"id": f"r{i}", "question": f"q{i}", "answer": f"#### {i}", "gold": str(i), **over},
                      ensure_ascii=False)


def test_a_duplicate_id_names_both_lines(tmp_path):
    p = tmp_path / "train.jsonl"
    p.write_text("\n".join([_line(1), _line(2), "", _line(3, id="r1")]) + "\n")
    with pytest.raises(data.DataError) as exc:
        data.read_jsonl(p)
    assert str(exc.value).startswith(f"{p}:4: id 'r1' is used again (first at {p}:1)")


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le"])
def test_a_utf16_file_says_utf16_and_how_to_convert(tmp_path, encoding):
    p = tmp_path / "train.jsonl"
    p.write_bytes((_line(1) + "\n" + _line(2) + "\n").encode(encoding))
    with pytest.raises(data.DataError) as exc:
        data.read_jsonl(p)
    msg = str(exc.value)
    assert msg.startswith(f"{p}") and "UTF-16" in msg and "iconv" in msg and "-t UTF-8" in msg
    if encoding == "utf-16-le":  # no byte-order mark: the line and the offset of the first NUL byte
        assert msg.startswith(f"{p}:1: NUL byte at byte offset 1:")


def test_a_latin1_file_names_the_line_the_byte_and_the_encoding(tmp_path):
    p = tmp_path / "train.jsonl"
    first = (_line(1) + "\n").encode()
    p.write_bytes(first + _line(2, question="Zoë has 3 crêpes").encode("latin-1") + b"\n")
    with pytest.raises(data.DataError) as exc:
        data.read_jsonl(p)
    at = len(first) + _line(2, question="Zoë").encode("latin-1").index(b"\xeb")
    assert str(exc.value).startswith(f"{p}:2: not UTF-8 (byte 0xeb at byte offset {at}); JSONL must be UTF-8")
    assert "iconv -f WINDOWS-1252 -t UTF-8" in str(exc.value)


def test_a_utf8_byte_order_mark_is_read_as_utf8(tmp_path):
    p = tmp_path / "train.jsonl"
    p.write_bytes(b"\xef\xbb\xbf" + (_line(1) + "\n" + _line(2) + "\n").encode())
    assert [r["id"] for r in data.read_jsonl(p)] == ["r1", "r2"]


@pytest.mark.parametrize("gold, says", [
    ("9" * 4000, "has 4000 digits (at most 15"),
    ("inf", "is not a finite number"),
    ("NaN", "is not a finite number"),
    ("1e400", "is not a finite number"),
])
def test_an_absurd_gold_in_a_split_is_refused_with_its_line(tmp_path, gold, says):
    p = tmp_path / "dev.jsonl"
    p.write_text(_line(1) + "\n" + _line(2, gold=gold) + "\n")
    with pytest.raises(data.DataError) as exc:
        data.read_jsonl(p)
    assert str(exc.value).startswith(f"{p}:2: gold ") and says in str(exc.value)


def test_a_json_infinity_gold_is_refused(tmp_path):
    p = tmp_path / "dev.jsonl"
    p.write_text('{"id": "a", "question": "q", "answer": "#### 1", "gold": Infinity}\n')
    with pytest.raises(data.DataError, match=rf"{p}:1: gold 'inf' is not a finite number"):
        data.read_jsonl(p)


# ---- 01: nothing in data/ changes unless all four splits are fit ------------------------------

def _gsm8k_source(folder: Path, train_answers: list[str], ids: list[str] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    recs = [{"question": f"How many now? {i}", "answer": a} for i, a in enumerate(train_answers)]
    if ids:
        for r, i in zip(recs, ids):
            r["id"] = i
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    test = [{"question": f"Test question {i}?", "answer": f"1+{i}=<<1+{i}={1 + i}>>{1 + i}\n#### {1 + i}"}
            for i in range(5)]
    (folder / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in test))
    return folder


def _run_01(cfg) -> dict[str, Path]:
    """What 01's write cell does."""
    prepared = data.prepare_splits(cfg.data, cfg.seed)
    return data.write_splits(cfg.data_dir, prepared["splits"], run_id=cfg.run_id, profile=cfg.profile)


def _snapshot(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture
def good_data(tmp_path):
    cfg = config.build("smoke", stage="data", root=str(tmp_path / "proj"), run_id="good",
                       **{"data.n_train": 40, "data.n_dev": 10, "data.n_test": 10, "data.n_platinum": 10})
    _run_01(cfg)
    return cfg


def _gsm8k_cfg(good, src):
    return config.build("full", stage="data", root=good.root, run_id="bad", gsm8k_path=str(src),
                        platinum_path=str(src / "test.jsonl"), dev_fraction=0.3)


def test_a_4000_digit_gold_in_the_source_stops_01_before_data_changes(good_data, tmp_path):
    before = _snapshot(good_data.data_dir)
    answers = [f"{i}+1=<<{i}+1={i + 1}>>{i + 1}\n#### {i + 1}" for i in range(8)]
    answers[2] = "a long one\n#### " + "9" * 4000
    src = _gsm8k_source(tmp_path / "src", answers)
    with pytest.raises(data.DataError) as exc:
        _run_01(_gsm8k_cfg(good_data, src))
    assert str(exc.value).startswith(f"{src / 'train.jsonl'}:3: gold '99999999999999999999...' has 4000 digits")
    assert _snapshot(good_data.data_dir) == before and data.check_splits(good_data.data_dir)["run_id"] == "good"


def test_a_duplicate_id_in_the_source_names_both_lines(good_data, tmp_path):
    answers = [f"{i}+1=<<{i}+1={i + 1}>>{i + 1}\n#### {i + 1}" for i in range(4)]
    src = _gsm8k_source(tmp_path / "src", answers, ids=["a", "b", "c", "a"])
    with pytest.raises(data.DataError, match=rf"{src / 'train.jsonl'}:4: id 'a' is used again \(first at "
                                             rf"{src / 'train.jsonl'}:1\)"):
        _run_01(_gsm8k_cfg(good_data, src))


def test_an_empty_train_split_is_refused_before_writing(good_data, tmp_path):
    before = _snapshot(good_data.data_dir)
    src = _gsm8k_source(tmp_path / "src", ["no final line"] * 6)  # every row filtered out
    with pytest.raises(data.DataError) as exc:
        _run_01(_gsm8k_cfg(good_data, src))
    assert f"not writing {good_data.data_dir}: the train split is empty" in str(exc.value)
    assert "files already there are unchanged" in str(exc.value)
    assert _snapshot(good_data.data_dir) == before


def test_a_full_disk_while_writing_leaves_the_old_splits_whole(good_data, monkeypatch):
    before = _snapshot(good_data.data_dir)
    real, calls = data.write_jsonl, []

    def third_write_fails(path, rows):
        calls.append(path)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, rows)

    monkeypatch.setattr(data, "write_jsonl", third_write_fails)
    other = good_data.override(stage="data", run_id="second", seed=5)
    with pytest.raises(OSError, match="no space left on"):
        _run_01(other)
    assert _snapshot(good_data.data_dir) == before
    assert [p.name for p in good_data.data_dir.iterdir() if p.name.startswith(".01_data.") and p.is_dir()] == []
    assert data.check_splits(good_data.data_dir)["run_id"] == "good"


def test_splits_from_two_runs_are_reported_by_every_reader(good_data):
    files = data.data_files(good_data.data_dir)
    dev_of_good = files["dev"].read_bytes()
    _run_01(good_data.override(stage="data", run_id="second", seed=7))
    assert data.check_splits(good_data.data_dir)["run_id"] == "second"
    files["dev"].write_bytes(dev_of_good)  # what a stop between two renames, or a racing run, leaves
    with pytest.raises(data.DataError) as exc:
        data.read_jsonl(files["train"])  # 02-05 read the splits this way
    msg = str(exc.value)
    assert msg.startswith(f"{files['dev']} is not the dev split that run 'second' (profile 'smoke'")
    assert "Rerun notebooks/01_data.ipynb" in msg
    with pytest.raises(data.DataError, match="is not the dev split that run 'second'"):
        evaluation.load_test_set(good_data.override(stage="eval", models="sft"), "platinum")  # 06
    files["dev"].unlink()
    with pytest.raises(data.DataError, match=rf"{files['dev']} is missing but .*manifest.json lists it"):
        data.read_jsonl(files["test"])


def test_manifest_records_each_file_and_the_run(good_data):
    m = json.loads((good_data.data_dir / data.MANIFEST).read_text())
    files = data.data_files(good_data.data_dir)
    assert (m["run_id"], m["profile"]) == ("good", "smoke")
    for split, f in files.items():
        assert m["splits"][split] == {"file": f.name, "rows": len(data.read_jsonl(f)),
                                      "sha256": hashlib.sha256(f.read_bytes()).hexdigest()}


def test_two_01_runs_at_once_leave_one_runs_splits(good_data):
    cfgs = [good_data.override(stage="data", run_id=f"run{i}", seed=10 + i) for i in range(2)]
    splits = [data.prepare_splits(c.data, c.seed)["splits"] for c in cfgs]
    errors = []

    def write(i):
        try:
            for _ in range(8):
                data.write_splits(good_data.data_dir, splits[i], run_id=f"run{i}", profile="smoke")
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    winner = data.check_splits(good_data.data_dir)["run_id"]
    i = int(winner[-1])
    assert data.read_jsonl(data.data_files(good_data.data_dir)["train"]) == splits[i]["train"]
