"""CSV loader cost per column: CsvLoader vs raw csv.reader of the same wide file.

The loader once checked the header with ``list.count``/``list.index`` per column (quadratic:
10,000 columns 1-16 s, 200,000 columns about 10 minutes). This measures, for each column count,
the loader's time over a raw ``csv.reader`` pass of the same file (median of repetitions); a
linear loader keeps that ratio flat as the columns grow, a quadratic one multiplies it.

    python benchmarks/csv_columns.py [--columns 4000,16000,64000] [--rows 20] [--repeat 3]

Last line: ``csv_ratio_<N>=<loader/raw> ... csv_ratio_growth=<ratio at max N / ratio at min N>``.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import tempfile
import time
from pathlib import Path

from mlflow_rag.load.csv import CsvLoader


def write_wide(path: Path, columns: int, rows: int) -> None:
    with path.open("w", encoding="utf-8", newline="") as f:
        f.write("id,body," + ",".join(f"c{i}" for i in range(columns - 2)) + "\n")
        values = ",".join(["v"] * (columns - 2))
        for r in range(rows):
            f.write(f"r{r},{'free text about search ' * 4},{values}\n")


def timed(run: object, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()  # type: ignore[operator]
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--columns", default="4000,16000,64000")
    parser.add_argument("--rows", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    sizes = [int(x) for x in args.columns.split(",")]
    ratios: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            path = Path(tmp) / f"wide{n}.csv"
            write_wide(path, n, args.rows)
            loader = CsvLoader(max_columns=max(sizes))

            def raw(path: Path = path) -> None:
                with path.open(encoding="utf-8", newline="") as f:
                    for _ in csv.reader(f):
                        pass

            def ours(path: Path = path, loader: CsvLoader = loader) -> None:
                items = list(loader.load(str(path)))
                assert len(items) == args.rows

            raw_s, ours_s = timed(raw, args.repeat), timed(ours, args.repeat)
            ratios[n] = ours_s / raw_s
            print(f"{n:>7} columns x {args.rows} rows: raw {raw_s * 1000:8.1f} ms, "
                  f"CsvLoader {ours_s * 1000:8.1f} ms, ratio {ratios[n]:.1f}")
    growth = ratios[max(sizes)] / ratios[min(sizes)]
    print(" ".join(f"csv_ratio_{n}={r:.2f}" for n, r in ratios.items()) + f" csv_ratio_growth={growth:.2f}")


if __name__ == "__main__":
    main()
