"""Which data sources a model was trained and evaluated on, with their licences (for bundle.json and the card).

Licences come from the data build's ``stats.json`` (written by ``shenhe data build``); row counts are the
rows the run actually used."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from shenhe.models.bundle import DataSource

STATS_FILE = "stats.json"


def describe_sources(data_dir: Path, used_rows: dict[str, dict[str, int]]) -> list[DataSource]:
    """``used_rows`` is {split: {source: rows}}; returns one DataSource per source, sorted by name."""
    stats: dict[str, Any] = {}
    p = data_dir / STATS_FILE
    if p.is_file():
        try:
            stats = json.loads(p.read_text(encoding="utf-8")).get("sources", {}) or {}
        except (OSError, json.JSONDecodeError):
            stats = {}
    names = sorted({name for split in used_rows.values() for name in split})
    out: list[DataSource] = []
    for name in names:
        meta = stats.get(name, {}) if isinstance(stats.get(name), dict) else {}
        commercial = meta.get("commercial")
        synthetic = meta.get("kind") == "synthetic"
        note = "" if commercial is None else ("commercial use allowed" if commercial else
                                             "NON-COMMERCIAL / research use only")
        out.append(DataSource(
            name=name,
            title=str(meta.get("title", "")),
            licence=str(meta.get("licence", "unknown (not in the data build's stats.json)")),
            commercial=commercial if isinstance(commercial, bool) else None,
            rows={split: int(rows.get(name, 0)) for split, rows in used_rows.items()},
            synthetic=synthetic,
            note=("synthetic, written for this project; " + note) if synthetic else note,
        ))
    return out
