"""Split-CIFAR-10 NC with latent replay: 1-bit vs float32 memory, frozen vs trained blocks.

For each seed the first experience trains `bnn32_norm` (float, Adam, the same budget as
`split_cifar10.py`); the network is split at the input of its last
`--trainable-blocks` binary blocks (the latent layer), and every variant learns the
later experiences from that same network (SGD, batch 50 new + 128 replayed):

- head-only CWR* 8/16 (no replay; the blocks above the latent layer frozen);
- CWR* 8/16 + float32 replay of N patterns, + 1-bit replay of the same N patterns, and
  + 1-bit replay of 32N patterns (the same pattern bytes as float32: the follow-up's
  argument), blocks frozen; plain fine-tuning + the same 1-bit 32N memory;
- CWR* 8/16 + 1-bit 32N replay with the blocks above the latent layer trained by
  quantized back-prop, gradients at q_b = 16 and 8 bits (METHOD §5), float32 replay
  of the same 32N patterns with the blocks trained (q_b of the first bits), the same
  1-bit / float32 pair with `consolidation="latest"` (a seen class keeps its trained
  column: the blocks changed the features its consolidated one fitted), and plain
  fine-tuning instead of CWR* with the 1-bit memory;
- joint training of the whole network on all the stream's training parts (upper
  bound).

Each variant and the joint bound of a seed are cached on their own in the user cache
(`~/.cache/larq_cwr/benchmarks/split_cifar10_replay/`, same code and settings only), so
an interrupted run resumes where it stopped. Reported per seed: final accuracy, its
fraction of joint, replay pattern bytes, and the later experiences' fit time relative
to head-only CWR* (the same number of steps, so the step-time ratio), and each 1-bit
row's gap to its float32 twin (the same row and patterns). Results:
`benchmarks/results/split_cifar10_replay*.json` (code-keyed, `common.cached`) and the
table in `docs/replay.md`.

    python benchmarks/split_cifar10_replay.py [--seeds 0 1 2]

`--large-memory M` sets the large 1-bit memory to M patterns instead of 32N; `--rows
NAME ...` computes only the rows named (the joint bound always), e.g. one split lower:
`--trainable-blocks 4 --block-learning-rate 0.05 --backward-bits 16 --rows
finetune_8_16_replay-1bit-9600_blocks-qb16 --doc docs/other.md`.

Skips (exit 0) when the CIFAR-10 data is absent.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import pathlib
import sys
import time

import common  # isort: skip  (sets up larq_cwr before TensorFlow)
import numpy as np
from docblock import replace_block

from larq_cwr.backprop import BLOCK_OPTIMIZERS
from larq_cwr.datasets import default_cache_dir
from larq_cwr.experiment import Variant, run_stream, train_joint
from larq_cwr.reporting import format_table, write_json

MARKER = "<!-- split_cifar10_replay table -->"
END = "<!-- end split_cifar10_replay table -->"
BACKBONE = "bnn32_norm"
HEAD_ONLY = "cwr_8_16"
JOINT_TARGET = 0.85  # issue 9: CWR* + 1-bit replay at >= 85% of joint
FLOAT_GAP_TARGET = 0.01  # ... and within 1 pp of float32 replay (same patterns)
PARTS = default_cache_dir() / "benchmarks" / "split_cifar10_replay"
ROW_CHOICES = ("backward_bits", "large_memory", "rows")  # settings that only pick rows


def variants(
    size: int, backward_bits: tuple[int, ...], *, large: int | None = None
) -> tuple[Variant, ...]:
    """Every row, in table order. ``large`` is the big 1-bit memory's patterns (default
    ``32 * size``: the same pattern bytes as float32 replay of ``size``)."""
    large = large or 32 * size  # 1 bit per value instead of 32
    trained = {
        strategy: tuple(
            getattr(Variant, strategy)(
                8,
                16,
                replay="1bit",
                replay_size=large,
                train_blocks=True,
                backward_bits=bits,
            )
            for bits in backward_bits
        )
        for strategy in ("cwr", "finetune")
    }
    # Float32 twin of the first trained CWR* row: 1-bit vs float32 at the same
    # patterns with the blocks trained too (the 1-bit rows binarize live latents).
    float_trained = Variant.cwr(
        8,
        16,
        replay="float32",
        replay_size=large,
        train_blocks=True,
        backward_bits=backward_bits[0],
    )
    # The same pair with the consolidation that keeps the trained columns: the blocks
    # change the features the consolidated columns were fitted to.
    latest = tuple(
        Variant.cwr(
            8,
            16,
            replay=storage,
            replay_size=large,
            train_blocks=True,
            backward_bits=backward_bits[0],
            consolidation="latest",
        )
        for storage in ("1bit", "float32")
    )
    return (
        Variant.cwr(8, 16),
        Variant.cwr(8, 16, replay="float32", replay_size=size),
        Variant.cwr(8, 16, replay="1bit", replay_size=size),
        Variant.cwr(8, 16, replay="1bit", replay_size=large),
        *trained["cwr"],
        float_trained,
        *latest,
        Variant.finetune(8, 16, replay="1bit", replay_size=large),
        *trained["finetune"],
    )


def selected(args) -> tuple[Variant, ...]:
    """The rows this run computes: ``--rows`` (table order), or every row."""
    every = variants(args.replay_size, tuple(args.backward_bits), large=args.large_memory)
    if not args.rows:
        return every
    unknown = sorted(set(args.rows) - {v.name for v in every})
    if unknown:
        raise ValueError(
            f"unknown rows {', '.join(unknown)}; with these settings the rows are "
            f"{', '.join(v.name for v in every)}"
        )
    return tuple(v for v in every if v.name in args.rows)


def run_seed(data, seed: int, args, settings: dict) -> dict:
    stream = common.make_stream(
        data,
        "nc",
        seed,
        first_epochs=args.first_epochs,
        epochs=args.epochs,
        backbone=BACKBONE,
        trainable_blocks=args.trainable_blocks,
        learning_rate=args.learning_rate,
        block_learning_rate=args.block_learning_rate,
        block_optimizer=args.block_optimizer,
        binarize_first_latents=args.binarize_first_latents,
    )
    record = {
        "seed": seed,
        "class_order": list(stream.scenario.class_order),
        "first_experience_seconds": stream.first_seconds,
        "latent_shape": list(stream.test.train[0].shape[1:]),
        "variants": {},
    }
    # A seed takes more than an hour on 2 cores: each variant and the joint bound are
    # cached on their own (user cache, same code and settings), so an interrupted run
    # resumes at the first part it has not finished. Order: the frozen CWR* rows
    # (minutes each), the joint bound, then the slow rows (trained blocks, fine-tuning).
    every = selected(args)
    fast = [v for v in every if v.strategy == "cwr" and not v.train_blocks]

    def run(variant):
        result = cached_part(
            seed,
            settings,
            name=variant.name,
            label=repr(variant),
            compute=lambda: run_variant(stream, variant),
        )
        logging.info(
            "seed %d %s: final %.4f, %.0f s",
            seed,
            variant.name,
            result["final_accuracy"],
            result["fit_seconds"],
        )
        return result

    done = {v.name: run(v) for v in fast}
    record["joint"] = cached_part(
        seed,
        settings,
        name="joint",
        label="joint",
        compute=lambda: run_joint(stream, args.joint_epochs),
    )
    done |= {v.name: run(v) for v in every if v not in fast}
    record["variants"] = {v.name: done[v.name] for v in every}  # table order
    return record


def cached_part(seed: int, settings: dict, *, name: str, label: str, compute) -> dict:
    """One part of a seed (a variant or the joint bound) through `common.cached`, in
    `PARTS/seed<seed>[-signs]/<name>.json` (``--binarize-first-latents`` runs keep
    their own parts beside the others). Its key is the run's settings but those that
    only choose rows (the gradient bits, the large memory's size and ``--rows``: each
    variant's own bits and size are in its label), so a run of fewer rows reuses the
    parts of a longer one and the reverse."""
    key = {k: v for k, v in settings.items() if k not in ROW_CHOICES}
    signs = "-signs" if settings.get("binarize_first_latents") else ""
    return common.cached(
        PARTS / f"seed{seed}{signs}" / f"{name}.json",
        key | {"seed": seed, "variant": label},
        compute,
    )


def run_variant(stream, variant) -> dict:
    summary = run_stream(
        stream.test, variant, first_weights=stream.first_weights, config=stream.config
    ).summary()
    return {
        "final_accuracy": summary["final_accuracy"],
        "accuracy_all": summary["accuracy_all"],
        "fit_seconds": float(np.sum(summary["fit_seconds"])),
        "replay_memory": summary["replay_memory"],
    }


def run_joint(stream, epochs: int) -> dict:
    """Joint upper bound: the same backbone trained on all the stream's training parts."""
    config = dataclasses.replace(stream.config, joint_epochs=epochs)
    accuracy, seconds = train_joint(stream.scenario, config)
    return {"final_accuracy": accuracy, "fit_seconds": seconds}


class _NotFinished(Exception):
    """Raised instead of computing a part (``--finished-only``)."""


def _not_finished():
    raise _NotFinished


def finished_parts(seed: int, settings: dict, args) -> dict:
    """A seed's record from the parts already computed with the same code and settings
    (``--finished-only``: nothing is trained; a missing part is left out). The lookup
    is `cached_part`, as in `run_seed`."""
    labels = {"joint": "joint"} | {v.name: repr(v) for v in selected(args)}
    record = {"seed": seed, "variants": {}, "joint": None}
    for name, label in labels.items():
        try:
            result = cached_part(
                seed, settings, name=name, label=label, compute=_not_finished
            )
        except _NotFinished:  # absent, or written by other code or settings
            continue
        if name == "joint":
            record["joint"] = result
        else:
            record["variants"][name] = result
    return record


def table(records: list[dict], names: list[str]) -> tuple[str, dict]:
    """Markdown table and summary of `names` over the seeds' records; a part a seed
    has not finished shows as "-" and is left out of its row's mean."""
    summary, rows = {}, []

    def have(name):
        return [r for r in records if name in r["variants"]]

    for name in names:
        done = have(name)
        if not done:
            continue
        finals = [r["variants"][name]["final_accuracy"] for r in done]
        of_joint = [
            r["variants"][name]["final_accuracy"] / r["joint"]["final_accuracy"]
            for r in done
            if r["joint"]
        ]
        ratio = [
            r["variants"][name]["fit_seconds"] / r["variants"][HEAD_ONLY]["fit_seconds"]
            for r in done
            if HEAD_ONLY in r["variants"]
        ]
        memory = done[0]["variants"][name]["replay_memory"]
        summary[name] = {
            "seeds": [r["seed"] for r in done],
            "final": common.stats(finals),
            "of_joint": common.stats(of_joint) if of_joint else None,
            "fit_time_ratio": common.stats(ratio) if ratio else None,
            "replay_memory": memory,
        }
        rows.append(
            [
                name,
                *[
                    (
                        f"{100 * r['variants'][name]['final_accuracy']:.1f}"
                        if name in r["variants"]
                        else "-"
                    )
                    for r in records
                ],
                common.percent(summary[name]["final"]),
                f"{100 * np.mean(of_joint):.0f}%" if of_joint else "-",
                f"{memory['pattern_bytes']:,}" if memory else "-",
                f"{np.mean(ratio):.2f}x" if ratio else "-",
            ]
        )
    joints = [r["joint"]["final_accuracy"] for r in records if r["joint"]]
    if joints:
        summary["joint"] = common.stats(joints)
        rows.append(
            [
                "joint (upper bound)",
                *[
                    f"{100 * r['joint']['final_accuracy']:.1f}" if r["joint"] else "-"
                    for r in records
                ],
                common.percent(summary["joint"]),
                "100%",
                "-",
                "-",
            ]
        )
    headers = [
        "variant",
        *[f"seed {r['seed']}" for r in records],
        "mean ± std",
        "of joint",
        "replay bytes",
        "fit time vs head-only",
    ]
    return format_table(headers, rows), summary


def float_gaps(records: list[dict], names: list[str]) -> dict[str, dict[int, float]]:
    """``{1-bit row: {seed: its final accuracy - its float32 twin's}}`` for each 1-bit
    row whose twin (the same row with float32 storage) is in ``names``, over the seeds
    that finished both."""
    gaps = {}
    for one_bit in names:
        twin = one_bit.replace("replay-1bit-", "replay-float32-")
        if twin == one_bit or twin not in names:
            continue
        per_seed = {
            r["seed"]: r["variants"][one_bit]["final_accuracy"]
            - r["variants"][twin]["final_accuracy"]
            for r in records
            if one_bit in r["variants"] and twin in r["variants"]
        }
        if per_seed:
            gaps[one_bit] = per_seed
    return gaps


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=pathlib.Path, default=common.DEFAULT_CIFAR10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--first-epochs", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--joint-epochs", type=int, default=2)
    parser.add_argument("--trainable-blocks", type=int, default=2)
    parser.add_argument("--replay-size", type=int, default=300)
    parser.add_argument("--learning-rate", type=float, default=0.04)
    parser.add_argument("--block-learning-rate", type=float, default=0.009)
    parser.add_argument("--block-optimizer", choices=BLOCK_OPTIMIZERS, default="sgd")
    parser.add_argument("--backward-bits", type=int, nargs="+", default=[16, 8])
    parser.add_argument(
        "--binarize-first-latents",
        action="store_true",
        help="train the first experience on the latents' signs (every row then runs "
        "on binary latents)",
    )
    parser.add_argument(
        "--large-memory",
        type=int,
        default=None,
        help="patterns of the large 1-bit memory (default 32x --replay-size: the bytes "
        "of float32 replay of --replay-size)",
    )
    parser.add_argument(
        "--rows",
        nargs="+",
        default=None,
        metavar="NAME",
        help="compute and tabulate only these rows (names as in the table), not all",
    )
    parser.add_argument("--results", type=pathlib.Path, default=common.RESULTS)
    parser.add_argument("--doc", type=pathlib.Path, default=common.DOCS / "replay.md")
    parser.add_argument(
        "--finished-only",
        action="store_true",
        help="tabulate the parts already computed (same code and settings), train none",
    )
    args = parser.parse_args(argv)
    try:
        selected(args)
    except ValueError as error:
        parser.error(str(error))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if not args.data.exists():
        print(f"split_cifar10_replay: skipped, no CIFAR-10 data at {args.data}")
        return 0
    start = time.perf_counter()
    data = None if args.finished_only else common.load_cifar(args.data)
    args.results.mkdir(parents=True, exist_ok=True)
    settings = {
        key: value
        for key, value in vars(args).items()
        if key not in ("data", "seeds", "results", "doc", "finished_only")
    } | {"data": args.data.name}
    if args.finished_only:
        records = [finished_parts(seed, settings, args) for seed in args.seeds]
    else:
        records = [
            common.cached(
                args.results / f"split_cifar10_replay_seed{seed}.json",
                settings,
                lambda seed=seed: run_seed(data, seed, args, settings),
            )
            for seed in args.seeds
        ]
    names = [v.name for v in selected(args)]
    text, summary = table(records, names)
    meta = common.run_meta(start)
    gaps = float_gaps(records, names)
    best = max(
        (
            (entry["of_joint"]["mean"], name)
            for name, entry in summary.items()
            if name != "joint" and "1bit" in name and entry["of_joint"]
        ),
        default=None,
    )
    shape = records[0].get("latent_shape")
    signs = ", on the latents' signs" if args.binarize_first_latents else ""
    unfinished = {
        r["seed"]: [n for n in names if n not in r["variants"]]
        + ([] if r["joint"] else ["joint"])
        for r in records
    }
    lines = [
        f"Written by `benchmarks/split_cifar10_replay.py` from the code with source hash "
        f"`{meta['code']}`. CIFAR-10 (JPEG copy), NC 5x2, seeds {args.seeds}; "
        f"`{BACKBONE}` trained on the first experience ({args.first_epochs} epochs, "
        f"Adam{signs}); latent layer at the input of the last "
        f"{args.trainable_blocks} binary blocks"
        f"{f' (latent shape {shape})' if shape else ''}; later experiences "
        f"{args.epochs} epochs, SGD lr {args.learning_rate} (trained blocks: "
        f"{args.block_optimizer} lr {args.block_learning_rate}), batch 50 new + 128 "
        "replayed. Names: "
        "`replay-<storage>-<patterns>`, `blocks` trains the blocks above the latent "
        "layer, `qb<bits>` their gradient bits. Joint: the whole network on all "
        f"training data, {args.joint_epochs} epochs.",
        "",
        text,
        "",
    ]
    lines += [
        f"- seed {seed}: not finished, so not in the table: {', '.join(parts)}"
        for seed, parts in unfinished.items()
        if parts
    ]
    if best:
        lines.append(
            f"- best 1-bit variant: `{best[1]}` at {100 * best[0]:.0f}% of joint (target "
            f">= {100 * JOINT_TARGET:.0f}%): "
            f"{'met' if best[0] >= JOINT_TARGET else 'NOT met'}"
        )
    for one_bit, per_seed in gaps.items():
        gap = float(np.mean(list(per_seed.values())))
        lines.append(
            f"- `{one_bit}` vs its float32 twin (the same patterns): {100 * gap:+.2f} pp "
            f"(per seed {' / '.join(f'{100 * g:+.2f}' for g in per_seed.values())}; "
            f"target within {100 * FLOAT_GAP_TARGET:.0f} pp): "
            f"{'met' if gap >= -FLOAT_GAP_TARGET else 'NOT met'}"
        )
    lines += ["", f"Versions: {meta['versions']}. Machine: {meta['machine']}."]
    body = "\n".join(lines)
    write_json(
        {
            "settings": settings,
            "seeds": args.seeds,
            "summary": summary,
            "records": records,
            **meta,
        },
        args.results / "split_cifar10_replay.json",
    )
    replace_block(args.doc, body, marker=MARKER, end=END, new_file="# Latent replay\n")
    print(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
