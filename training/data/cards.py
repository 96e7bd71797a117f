"""Data cards: hand-written Markdown in ``data_cards/`` with generated count blocks.

Each card holds prose (origin, licence, mapping, known problems) and one or more blocks between
``<!-- BEGIN GENERATED: <name> -->`` and ``<!-- END GENERATED: <name> -->`` that are rendered from
``stats.json`` of the default build. ``shenhe data cards`` rewrites the blocks; ``--check`` fails
when a card's numbers differ from the build (CI runs that check in the integration test)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from shenhe.training.data.holdout import HOLDOUT_SPLIT
from shenhe.training.data.records import NORMAL, SPLITS

BLOCK = re.compile(r"(<!-- BEGIN GENERATED: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- END GENERATED: (?P=name) -->)",
                   re.DOTALL)
README = "README.md"
BUILD_COMMAND = "shenhe data build --raw ../shared/data --out data/build"


def card_name(source: str) -> str:
    return f"{source}.md"


def _rows_table(rows: dict[str, dict[str, int]], splits: tuple[str, ...] = SPLITS) -> list[str]:
    from shenhe.training.data.build import TABLE_ROWS

    lines = ["| category | " + " | ".join(splits) + " |", "|---|" + "---:|" * len(splits)]
    for row in TABLE_ROWS:
        if row != "total" and row != NORMAL and not any(rows[s][row] for s in splits):
            continue
        cells = [str(rows[s][row]) for s in splits]
        name = f"**{row}**" if row == "total" else row
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def render_source_counts(stats: dict[str, Any], source: str) -> str:
    """The generated block of one source's card: rows per category and split after dedup, and
    what the build dropped or merged."""
    s = stats["sources"].get(source)
    if s is None:
        return f"_{source} was not part of this build._\n"
    splits: tuple[str, ...] = SPLITS if any(s["rows"]["test"].values()) or s["kind"] == "public" else ("train", "dev")
    held = s["rows"].get(HOLDOUT_SPLIT, {}).get("total", 0)
    if held and not any(s["rows"][x]["total"] for x in SPLITS):
        splits = (HOLDOUT_SPLIT,)  # held-apart seeds: nothing in train, dev or test
    elif held:
        splits = (*splits, HOLDOUT_SPLIT)
    lines = [f"Rows per category and split after deduplication (`{BUILD_COMMAND}`; categories with no rows"
             " omitted; a row with two categories counts in both):", ""]
    lines += _rows_table(s["rows"], splits)
    lines += [
        "",
        f"- rows read: {s['rows_read']}; malformed rows skipped: {s['malformed']}; rows with no text left"
        f" after normalisation (only links, mentions, emoji, digits): {s['no_content']}",
        f"- duplicates merged into a row of this or another source: {s['duplicates_removed']};"
        f" duplicate groups with conflicting labels involving this source: {s['label_conflict_groups']}",
    ]
    if s["dropped_from_test"]:
        lines.append(f"- rows dropped because their text is in the test split: {s['dropped_from_test']}")
    if s["untrained_label_dropped"]:
        lines.append(f"- rows dropped because their only label is a category the policy does not train:"
                     f" {s['untrained_label_dropped']}")
    for example in s["malformed_examples"]:
        lines.append(f"- malformed example: `{example}`")
    return "\n".join(lines) + "\n"


def render_overview(stats: dict[str, Any]) -> str:
    """The README block: every source with licence, commercial use and rows per split, then totals."""
    from shenhe.training.data.sources import SOURCE_NAMES

    lines = ["| source | licence | commercial use | train | dev | test | held apart |",
             "|---|---|---|---:|---:|---:|---:|"]
    order = {name: i for i, name in enumerate(SOURCE_NAMES)}
    for name, s in sorted(stats["sources"].items(), key=lambda item: (order.get(item[0], len(order)), item[0])):
        rows = [str(s["rows"].get(split, {}).get("total", 0)) for split in (*SPLITS, HOLDOUT_SPLIT)]
        commercial = "yes" if s["commercial"] else "**no**"
        lines.append(f"| [{name}]({card_name(name)}) | {s['licence']} | {commercial} | " + " | ".join(rows) + " |")
    totals = stats["totals"]
    lines += ["", "Public data (real sources), rows per category and split (holdout = the held-apart half of dev,"
              " see `training/data/holdout.py`):", ""]
    lines += _rows_table(totals["real"], (*SPLITS, HOLDOUT_SPLIT) if HOLDOUT_SPLIT in totals["real"] else SPLITS)
    lines += ["", "Synthetic seed set (`seed_synthetic`, train/dev only, never test):", ""]
    lines += _rows_table(totals["synthetic"], ("train", "dev"))
    d = stats["dedup"]
    lines += [
        "",
        f"Read {stats['rows_read']} rows; {d['exact_duplicates']} exact and {d['near_duplicates']} near duplicates"
        f" merged ({d['cross_source_groups']} groups span two sources); {d['conflicts_majority+union']} groups"
        f" had conflicting labels (resolved by the rule above).",
    ]
    return "\n".join(lines) + "\n"


def render_block(name: str, stats: dict[str, Any]) -> str:
    if name == "overview":
        return render_overview(stats)
    if name.startswith("counts-"):
        return render_source_counts(stats, name.removeprefix("counts-"))
    raise ValueError(f"unknown generated block {name!r}")


def update_card(text: str, stats: dict[str, Any]) -> str:
    return BLOCK.sub(lambda m: m.group(1) + render_block(m.group("name"), stats) + m.group(4), text)


def update_cards(cards_dir: Path, stats: dict[str, Any], check: bool = False) -> list[Path]:
    """Rewrite (or, with ``check``, only compare) every card's generated blocks; returns the cards
    whose content differs from the stats."""
    stale = []
    for path in sorted(cards_dir.glob("*.md")):
        text = path.read_text(encoding="utf-8")
        new = update_card(text, stats)
        if new != text:
            stale.append(path)
            if not check:
                path.write_text(new, encoding="utf-8")
    return stale


def missing_cards(cards_dir: Path, stats: dict[str, Any]) -> list[str]:
    """Sources in the build without a card (README counts as the overview)."""
    names = [card_name(n) for n, s in stats["sources"].items() if s["kind"] != "extra"]
    return [n for n in [README, *names] if not (cards_dir / n).is_file()]
