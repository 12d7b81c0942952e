import json

import pytest
from conftest import FIXTURES, LANGUAGES, SHARED_DATA

from safetydrift.data.advbench import prepare_advbench, read_advbench
from safetydrift.data.mtpref import extract_source, prepare_mtpref, read_pairs
from safetydrift.data.sources import DataError, Source

TOWER = (
    "<|im_start|>user\nTranslate the following German source text to English:\n"
    "German: {text}\nEnglish:<|im_end|>\n<|im_start|>assistant\n"
)


def write_jsonl(path, rows):
    path.write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8"
    )
    return path


def mtpref(tmp_path, source, **overrides):
    args = {
        "split": "train",
        "languages": LANGUAGES,
        "target_language": "english",
        "test_ratio": 0.167,
        "seed": 42,
        "out_dir": tmp_path / "out",
    }
    args.update(overrides)
    return prepare_mtpref(Source(str(source)), **args)


def test_extract_source_keeps_the_bare_text_even_across_lines():
    language, target, text = extract_source(TOWER.format(text="Erste Zeile.\nZweite: Zeile."))
    assert (language, target, text) == ("german", "english", "Erste Zeile.\nZweite: Zeile.")
    assert extract_source("Translate this: Hallo") is None


def test_fixture_split_per_language_with_counted_drops(tmp_path):
    stats = mtpref(tmp_path, FIXTURES / "mtpref-tiny.jsonl")
    assert stats["rows_read"] == 33
    assert stats["rows_kept"] == 30
    assert stats["dropped_by_reason"] == {
        "source_language_not_selected": 2,
        "target_not_selected": 1,
    }
    assert stats["dropped_by_language"] == {"dutch": 2, "english": 1}
    # datasets' train_test_split rounds the test share up: ceil(6 * 0.167) = 2 per language
    assert stats["test_by_language"] == dict.fromkeys(sorted(LANGUAGES), 2)
    train = read_pairs(tmp_path / "out" / "train.jsonl")
    test = read_pairs(tmp_path / "out" / "test.jsonl")
    assert len(train) == 20 and len(test) == 10
    assert not {p.source_text for p in train} & {p.source_text for p in test}
    assert all(
        "<|im_start|>" not in p.source_text and "Translate" not in p.source_text for p in train
    )
    # the split is a pure function of the seed
    again = mtpref(tmp_path, FIXTURES / "mtpref-tiny.jsonl", out_dir=tmp_path / "again")
    assert (tmp_path / "again" / "test.jsonl").read_bytes() == (
        tmp_path / "out" / "test.jsonl"
    ).read_bytes()
    assert again["sha256"] == stats["sha256"]


@pytest.mark.skipif(not SHARED_DATA.exists(), reason="../shared/data is not beside this checkout")
def test_standin_prepares_about_five_thousand_rows(tmp_path):
    stats = mtpref(tmp_path, SHARED_DATA / "mtpref-standin.jsonl")
    assert stats["rows_read"] == 9875
    assert stats["rows_kept"] == 4887
    assert stats["train_rows"] + stats["test_rows"] == 4887
    assert 800 <= stats["test_rows"] <= 830
    assert set(stats["kept_by_language"]) == set(LANGUAGES)


@pytest.mark.skipif(not SHARED_DATA.exists(), reason="../shared/data is not beside this checkout")
def test_standin_advbench_has_520_prompts(tmp_path):
    stats = prepare_advbench(
        Source(str(SHARED_DATA / "advbench_harmful_behaviors.csv")), tmp_path / "a.jsonl"
    )
    rows = read_advbench(tmp_path / "a.jsonl")
    assert stats["rows"] == len(rows) == 520
    assert stats["column"] == "goal"
    assert rows[0] == {"id": 0, "prompt": rows[0]["prompt"]} and rows[-1]["id"] == 519


def test_advbench_hub_style_prompt_column(tmp_path):
    (tmp_path / "hub.csv").write_text("prompt\nDo a bad thing\n", encoding="utf-8")
    prepare_advbench(Source(str(tmp_path / "hub.csv")), tmp_path / "a.jsonl")
    assert read_advbench(tmp_path / "a.jsonl") == [{"id": 0, "prompt": "Do a bad thing"}]


def test_advbench_errors_name_the_file_and_row(tmp_path):
    (tmp_path / "bad.csv").write_text("request\nx\n", encoding="utf-8")
    with pytest.raises(
        DataError, match=r"bad\.csv: expected a column `prompt` or `goal` \(present: request\)"
    ):
        prepare_advbench(Source(str(tmp_path / "bad.csv")), tmp_path / "a.jsonl")
    (tmp_path / "empty.csv").write_text('goal\nfine\n""\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"empty\.csv, row 2: empty `goal`"):
        prepare_advbench(Source(str(tmp_path / "empty.csv")), tmp_path / "a.jsonl")
    assert not (tmp_path / "a.jsonl").exists()


def test_missing_columns_are_named(tmp_path):
    source = write_jsonl(
        tmp_path / "m.jsonl", [{"prompt": TOWER.format(text="Hallo"), "chosen": "Hi"}]
    )
    with pytest.raises(DataError, match=r"m\.jsonl: missing column\(s\) rejected"):
        mtpref(tmp_path, source)


def test_nothing_left_after_filtering_names_the_params(tmp_path):
    source = write_jsonl(
        tmp_path / "m.jsonl",
        [{"prompt": TOWER.format(text="Hallo"), "chosen": "Hi", "rejected": "Ho"}],
    )
    with pytest.raises(DataError, match=r"nothing left .*`data\.mtpref\.languages`"):
        mtpref(tmp_path, source, languages=["french"])
    assert not (tmp_path / "out").exists()


def test_undecodable_rows_name_the_line(tmp_path):
    path = tmp_path / "m.jsonl"
    good = json.dumps({"prompt": TOWER.format(text="Hallo"), "chosen": "Hi", "rejected": "Ho"})
    path.write_bytes(good.encode() + b"\n" + b'{"prompt": "\xff\xfe"}\n')
    with pytest.raises(ValueError, match=r"m\.jsonl, line 2: not valid UTF-8"):
        mtpref(tmp_path, path)
    path.write_text(good + "\n{not json\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"m\.jsonl, line 2: not valid JSON"):
        mtpref(tmp_path, path)


def test_unextractable_prompts_are_counted_and_all_bad_is_an_error(tmp_path):
    good = {"prompt": TOWER.format(text="Hallo Welt"), "chosen": "Hello world", "rejected": "Hi"}
    rows = [
        good,
        {**good, "prompt": "Please translate: Hallo"},
        {**good, "prompt": TOWER.format(text="Tschüss")},
    ]
    stats = mtpref(tmp_path, write_jsonl(tmp_path / "m.jsonl", rows), languages=["german"])
    assert stats["dropped_by_reason"] == {"prompt_not_in_tower_format": 1}
    with pytest.raises(DataError, match=r"no prompt is in the Tower form"):
        mtpref(tmp_path, write_jsonl(tmp_path / "bad.jsonl", [rows[1]]))


def test_a_local_path_that_does_not_exist(tmp_path):
    with pytest.raises(DataError, match=r"nope\.jsonl: no such file"):
        mtpref(tmp_path, tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match=r"no such file"):
        prepare_advbench(Source("./missing/advbench.csv"), tmp_path / "a.jsonl")


def test_parquet_and_csv_sources(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [json.loads(line) for line in (FIXTURES / "mtpref-tiny.jsonl").read_text().splitlines()]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "m.parquet")
    assert mtpref(tmp_path, tmp_path / "m.parquet")["rows_kept"] == 30
