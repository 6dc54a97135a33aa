"""Event-table validation and reading speed, against a plain pandas ``read_csv`` of the same file.

Run: ``.venv/bin/python benchmarks/data.py [--rows 100000]``. Writes ``benchmarks/results/data.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from medsim.data import read_event_table, validate_event_table


def _table(rows: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    per = 100
    n_subjects = rows // per
    evid = np.tile((np.arange(per) % 10 == 0).astype(int), n_subjects)
    return pd.DataFrame(
        {
            "ID": np.repeat(np.arange(1, n_subjects + 1), per),
            "TIME": np.tile(np.arange(per, dtype=float), n_subjects),
            "DV": np.where(evid == 1, np.nan, rng.lognormal(size=evid.size).round(4)),
            "AMT": np.where(evid == 1, 100.0, 0.0),
            "EVID": evid,
            "WT": np.repeat(rng.uniform(50, 90, n_subjects).round(1), per),
        }
    )


def _best(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "table.csv"
        _table(args.rows).to_csv(path, index=False, na_rep=".")
        t_pandas = _best(lambda: pd.read_csv(path, na_values="."))
        t_validate = _best(lambda: validate_event_table(path))
        t_read = _best(lambda: read_event_table(path))
    figures = {
        "pandas_read_csv_s": t_pandas,
        "validate_s": t_validate,
        "read_event_table_s": t_read,
        "validate_over_pandas": t_validate / t_pandas,
        "read_over_pandas": t_read / t_pandas,
    }
    print(
        f"{args.rows} rows: pandas.read_csv {t_pandas:.3f} s | validate {t_validate:.3f} s "
        f"({figures['validate_over_pandas']:.1f}x) | read_event_table {t_read:.3f} s "
        f"({figures['read_over_pandas']:.1f}x)"
    )
    out = Path(__file__).parent / "results" / "data.json"
    out.parent.mkdir(exist_ok=True)
    payload = {
        "benchmark": "data",
        "rows": args.rows,
        "figures": figures,
        "units": "seconds (best of 3)",
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cores": os.cpu_count()},
        "versions": {"pandas": pd.__version__, "numpy": np.__version__},
        "command": f"python benchmarks/data.py --rows {args.rows}",
    }
    tmp_out = out.with_suffix(".json.tmp")
    tmp_out.write_text(json.dumps(payload, indent=2))
    os.replace(tmp_out, out)


if __name__ == "__main__":
    main()
