"""Runs the query benchmark's SQL through DuckDB over arcdb's Parquet files.

Usage: duckdb_suite.py <parquet glob> <iterations> <JSON list of {"name", "sql"}>
Prints a JSON object: query name -> median seconds. Results are fetched as Arrow tables, so
DuckDB is not charged for building Python objects.
"""

import json
import statistics
import sys
import time

import duckdb


def main() -> None:
    glob, iterations, queries = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
    con = duckdb.connect()
    con.execute(
        f"CREATE VIEW cpu AS SELECT * FROM read_parquet('{glob}', union_by_name = true)"
    )
    medians = {}
    for query in queries:
        times = []
        for _ in range(iterations):
            started = time.perf_counter()
            result = con.execute(query["sql"])
            # DuckDB 2 renamed fetch_arrow_table to to_arrow_table.
            (getattr(result, "to_arrow_table", None) or result.fetch_arrow_table)()
            times.append(time.perf_counter() - started)
        medians[query["name"]] = statistics.median(times)
    print(json.dumps(medians))


if __name__ == "__main__":
    main()
