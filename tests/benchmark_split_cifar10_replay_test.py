"""`benchmarks/split_cifar10_replay.py`: `--rows` and `--large-memory` pick the rows, and
a part computed for one choice of rows is reused by another (no CIFAR data needed)."""

import argparse
import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
import split_cifar10_replay as replay  # noqa: E402

TRAINED_FINETUNE = "finetune_8_16_replay-1bit-9600_blocks-qb16"


def _args(**overrides):
    values = {"replay_size": 300, "backward_bits": [16, 8], "large_memory": None}
    return argparse.Namespace(**(values | {"rows": None} | overrides))


def test_every_row_by_default_with_the_same_bytes_memory():
    names = [v.name for v in replay.selected(_args())]
    assert names == [
        "cwr_8_16",
        "cwr_8_16_replay-float32-300",
        "cwr_8_16_replay-1bit-300",
        "cwr_8_16_replay-1bit-9600",
        "cwr_8_16_replay-1bit-9600_blocks-qb16",
        "cwr_8_16_replay-1bit-9600_blocks-qb8",
        "cwr_8_16_replay-float32-9600_blocks-qb16",
        "cwr_8_16_replay-1bit-9600_blocks-qb16_consolidate-latest",
        "cwr_8_16_replay-float32-9600_blocks-qb16_consolidate-latest",
        "finetune_8_16_replay-1bit-9600",
        TRAINED_FINETUNE,
        "finetune_8_16_replay-1bit-9600_blocks-qb8",
    ]
    trained = replay.selected(_args(rows=[TRAINED_FINETUNE]))[0]
    assert trained.strategy == "finetune" and trained.train_blocks
    assert (trained.replay, trained.replay_size, trained.backward_bits) == (
        "1bit",
        9600,
        16,
    )
    latest = replay.selected(
        _args(
            rows=[
                f"cwr_8_16_replay-{s}-9600_blocks-qb16_consolidate-latest"
                for s in ("1bit", "float32")
            ]
        )
    )
    assert [(v.strategy, v.consolidation, v.replay, v.train_blocks) for v in latest] == [
        ("cwr", "latest", "1bit", True),
        ("cwr", "latest", "float32", True),
    ]


def test_rows_keep_table_order_and_the_large_memory_renames_them():
    rows = [TRAINED_FINETUNE, "cwr_8_16"]
    assert [v.name for v in replay.selected(_args(rows=rows))] == rows[::-1]
    large = replay.selected(_args(large_memory=28800, backward_bits=[16]))
    assert [v.replay_size for v in large if v.replay == "1bit"] == [
        300,
        28800,
        28800,
        28800,
        28800,
        28800,
    ]


def test_float_gaps_pair_each_1_bit_row_with_its_float32_twin():
    def record(seed, **finals):
        return {
            "seed": seed,
            "variants": {k: {"final_accuracy": v} for k, v in finals.items()},
        }

    small, large = "cwr_8_16_replay-1bit-300", "cwr_8_16_replay-1bit-9600_blocks-qb16"
    twins = {
        small: "cwr_8_16_replay-float32-300",
        large: "cwr_8_16_replay-float32-9600_blocks-qb16",
    }
    names = [v.name for v in replay.selected(_args(backward_bits=[16]))]
    assert set(twins.values()) <= set(names)
    records = [
        record(0, **{small: 0.50, twins[small]: 0.53, large: 0.64, twins[large]: 0.66}),
        record(1, **{small: 0.40, large: 0.60, twins[large]: 0.59}),  # no twin for small
    ]
    gaps = replay.float_gaps(records, names)
    assert list(gaps) == [small, large]
    assert gaps[small] == pytest.approx({0: -0.03})
    assert gaps[large] == pytest.approx({0: -0.02, 1: 0.01})
    # Rows absent from the names have no twin: no gap.
    assert replay.float_gaps(records, [large]) == {}


def test_an_unknown_row_is_a_one_line_usage_error(capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        replay.main(["--rows", "cwr_8_16", "no_such_row", "--data", str(tmp_path / "none")])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "unknown rows no_such_row" in error and "cwr_8_16_replay-1bit-300" in error


def test_parts_are_shared_across_row_choices_but_not_other_settings(monkeypatch, tmp_path):
    monkeypatch.setattr(replay, "PARTS", tmp_path)
    calls = []

    def part(settings):
        return replay.cached_part(
            0,
            settings,
            name="cwr_8_16",
            label="cwr",
            compute=lambda: calls.append(1) or 0.5,
        )

    settings = {"epochs": 5, "backward_bits": [16, 8], "large_memory": None, "rows": None}
    assert part(settings) == 0.5 and len(calls) == 1
    fewer = settings | {"backward_bits": [16], "large_memory": 28800, "rows": ["cwr_8_16"]}
    assert part(fewer) == 0.5 and len(calls) == 1  # reused
    assert part(settings | {"epochs": 10}) == 0.5 and len(calls) == 2  # recomputed
    # A run on the latents' signs keeps its own parts: the plain part is not replaced.
    signs = settings | {"epochs": 10, "binarize_first_latents": True}
    assert part(signs) == 0.5 and len(calls) == 3
    assert part(settings | {"epochs": 10}) == 0.5 and len(calls) == 3  # still cached
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seed0", "seed0-signs"]
