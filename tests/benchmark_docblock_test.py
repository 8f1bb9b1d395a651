"""Benchmark tables written into Markdown files (`benchmarks/docblock.py`): a script
replaces its own block and keeps the rest of the page, other scripts' blocks included."""

import argparse
import json
import pathlib
import sys

BENCHMARKS = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
import device  # noqa: E402
import device_parity  # noqa: E402
import hybrid_ablation  # noqa: E402
from docblock import replace_block  # noqa: E402

PAGE = """# Device

Intro.

<!-- device benchmark table -->
old device table
<!-- end device benchmark table -->

## Parity on CIFAR-10

<!-- device_parity table -->
old parity table
<!-- end device_parity table -->

Closing words.
"""


def _record(name):
    return json.loads((BENCHMARKS / "results" / f"{name}.json").read_text())


def test_replace_block_replaces_only_its_block(tmp_path):
    doc = tmp_path / "page.md"
    doc.write_text("a\n<!-- x -->\nold\n<!-- end x -->\nb\n")
    replace_block(doc, "new", marker="<!-- x -->", end="<!-- end x -->")
    assert doc.read_text() == "a\n<!-- x -->\nnew\n<!-- end x -->\nb\n"


def test_replace_block_places_a_new_block(tmp_path):
    doc = tmp_path / "page.md"
    doc.write_text("a\n## Next\nb\n")
    replace_block(doc, "t", marker="<!-- x -->", end="<!-- end x -->", before="## Next")
    assert doc.read_text() == "a\n<!-- x -->\nt\n<!-- end x -->\n\n## Next\nb\n"
    absent = tmp_path / "absent.md"
    replace_block(absent, "t", marker="<!-- y -->", end="<!-- end y -->", new_file="# T\n")
    assert absent.read_text() == "# T\n\n<!-- y -->\nt\n<!-- end y -->\n"


def test_device_table_keeps_the_parity_block(tmp_path):
    # device.py used to cut the page at its marker, deleting the parity table below.
    doc = tmp_path / "device.md"
    doc.write_text(PAGE)
    table = device.write_table(_record("device")["result"], doc)
    text = doc.read_text()
    assert "old device table" not in text and table in text
    before, _, after = text.partition("<!-- end device benchmark table -->")
    assert after == PAGE.partition("<!-- end device benchmark table -->")[2]
    assert before.startswith("# Device\n\nIntro.\n\n<!-- device benchmark table -->\n")


def test_parity_table_keeps_the_device_block(tmp_path):
    doc = tmp_path / "device.md"
    doc.write_text(PAGE)
    record = _record("device_parity")
    args = argparse.Namespace(**record["settings"])
    table = device_parity.write_doc(record["result"], doc, args)
    text = doc.read_text()
    assert "old parity table" not in text and table in text
    assert text.startswith(PAGE.partition("<!-- device_parity table -->")[0])
    assert text.endswith("<!-- end device_parity table -->\n\nClosing words.\n")
    assert text.count(device_parity.HEADING) == 1


def test_parity_table_goes_under_its_heading_on_a_page_without_it(tmp_path):
    doc = tmp_path / "device.md"
    doc.write_text("# Device\n\nIntro.\n")
    record = _record("device_parity")
    device_parity.write_doc(record["result"], doc, argparse.Namespace(**record["settings"]))
    text = doc.read_text()
    assert text.startswith(
        "# Device\n\nIntro.\n\n## Parity on CIFAR-10\n\n<!-- device_parity table -->\n"
    )
    assert text.endswith("<!-- end device_parity table -->\n")


def test_ablation_table_keeps_what_follows_it(tmp_path):
    # hybrid_ablation.py used to cut the page at its marker, like device.py.
    doc = tmp_path / "quantization.md"
    doc.write_text(
        "# Q\n\n<!-- hybrid_ablation table -->\nold\n<!-- end hybrid_ablation table -->"
        "\n\n## Later section\n"
    )
    table = hybrid_ablation.write_table(_record("hybrid_ablation")["records"], doc)
    text = doc.read_text()
    assert text.startswith("# Q\n\n<!-- hybrid_ablation table -->\nSplit-CIFAR-10")
    assert text.endswith(
        f"{table}\n<!-- end hybrid_ablation table -->\n\n## Later section\n"
    )
