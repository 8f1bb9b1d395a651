"""Writing a benchmark's table into a Markdown file between its own two markers."""

from __future__ import annotations

import pathlib


def replace_block(
    path: pathlib.Path,
    text: str,
    *,
    marker: str,
    end: str,
    before: str | None = None,
    new_file: str = "",
) -> None:
    """Put `text` between `marker` and `end` in `path`, keeping the rest of the file.

    Arguments:
        path: The Markdown file (created from `new_file` if absent).
        text: The block's new content.
        marker: The line that opens the block.
        end: The line that closes it.
        before: Where a block not yet in the file goes: before this line if the file
            has it, else at the end.
        new_file: The content of a file that does not exist yet.
    """
    doc = path.read_text() if path.exists() else new_file
    if marker not in doc:
        block = f"{marker}\n{end}\n"
        if before and before in doc:
            doc = doc.replace(before, f"{block}\n{before}")
        else:
            doc = doc.rstrip("\n") + f"\n\n{block}"
    head, _, rest = doc.partition(marker)
    _, _, tail = rest.partition(end)
    path.write_text(f"{head}{marker}\n{text}\n{end}{tail}")
