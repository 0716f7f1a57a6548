"""What every benchmark reports with: one percentile, number formats, JSON/CSV files, matplotlib set-up and
the sections of docs/benchmarks.md (each benchmark rewrites its own section and leaves the others alone)."""

from __future__ import annotations

import csv
import json
import shutil
import textwrap
from pathlib import Path


def percentile(values: list[float], q: float) -> float | None:
    """The `q`-th percentile by nearest rank on the sorted values (no interpolation); None when empty.

    The one definition of every p50/p95/p99 in loraplex's benchmarks, so their numbers compare.
    """
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def bucket_percentile(buckets: dict[float, float], q: float) -> float | None:
    """The `q`-th percentile of a histogram's cumulative bucket counts ({upper bound: count}), None when empty.

    Interpolated linearly inside the bucket that holds the rank, as Prometheus's histogram_quantile
    does; in the +Inf bucket, the largest finite bound. For metrics the benchmarks read from /metrics.
    """
    bounds = sorted(buckets)
    total = buckets[bounds[-1]] if bounds else 0
    if not total:
        return None
    rank, lower, below = q / 100 * total, 0.0, 0.0
    for upper in bounds:
        count = buckets[upper]
        if count >= rank and count > below:
            if upper == float("inf"):
                return lower
            return lower + (upper - lower) * (rank - below) / (count - below)
        lower, below = upper, count
    return lower


def ms(seconds: float | None) -> float | None:
    """Seconds as milliseconds to 0.1 ms (None stays None)."""
    return None if seconds is None else round(seconds * 1000, 1)


def fmt(v, nd: int = 1) -> str:
    """A table cell: '-' for None, yes/**no** for booleans, floats to `nd` places."""
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "**no**"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def write_csv(path: Path, rows: list[dict], skip: tuple[str, ...] = ()) -> None:
    """Rows as CSV: every key any row has (in first-seen order) except `skip`; lists and dicts as JSON."""
    fields: list[str] = []
    for r in rows:
        fields += [k for k in r if k not in fields and k not in skip]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (json.dumps(v) if isinstance(v, (list, dict)) else v) for k, v in r.items()})


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (benchmarks run without a display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def markers(name: str) -> tuple[str, str]:
    """The HTML comments that delimit section `name` (invisible in rendered markdown)."""
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def replace_section(path: Path, name: str, body: str) -> None:
    """Put `body` between the markers of section `name` in `path`, appending the section if it is missing."""
    start, end = markers(name)
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    block = f"{start}\n{body.rstrip()}\n{end}"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)


def copy_images(images: list[Path], docs: Path) -> Path:
    """Copy a run's plots into img/ beside the docs file; returns that folder."""
    img = docs.parent / "img"
    img.mkdir(parents=True, exist_ok=True)
    for png in images:
        shutil.copyfile(png, img / png.name)
    return img


def wrap(text: str, width: int = 110) -> str:
    """Wrap prose and bullets of markdown at `width` like the rest of the docs; tables and images stay whole."""
    out = []
    for line in text.split("\n"):
        if not line or line.startswith(("|", "![", "<!--")):
            out.append(line)
        else:
            indent = "  " if line.startswith("- ") else ""
            out.append(textwrap.fill(line, width, subsequent_indent=indent, break_long_words=False,
                                     break_on_hyphens=False))
    return "\n".join(out)
