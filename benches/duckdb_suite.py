"""Runs the query benchmark's SQL through DuckDB over arcdb's Parquet files.

Usage: duckdb_suite.py <parquet glob | @file of paths> <iterations> <JSON list of {"name", "sql"}>
                       <answers dir>
Prints a JSON object: query name -> median seconds. A first, untimed run of each query writes its
answer to <answers dir>/<name>.json in the shape of arcdb's JSON answer,
{"columns": [...], "data": [[...], ...]}, timestamps as RFC 3339 strings. Timed runs then fetch
results as Arrow tables, so DuckDB is not charged for building Python objects.
"""

import datetime
import json
import os
import statistics
import sys
import time

import duckdb


def json_cell(value):
    if isinstance(value, datetime.datetime):
        # TIMESTAMP (no zone) holds UTC, as arcdb's time column does.
        if value.tzinfo is None:
            value = value.replace(tzinfo=datetime.timezone.utc)
        return value.isoformat()
    return value


def main() -> None:
    glob, iterations, queries = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
    answers = sys.argv[4]
    con = duckdb.connect()
    # Time literals and TIMESTAMPTZ values in UTC, as in arcdb, whatever the machine's zone.
    con.execute("SET TimeZone = 'UTC'")
    if glob.startswith("@"):
        # An exact list: after a compaction the replaced files stay on disk for a while.
        with open(glob[1:]) as listing:
            files = [line.strip() for line in listing if line.strip()]
        source = "[" + ", ".join(f"'{f}'" for f in files) + "]"
    else:
        source = f"'{glob}'"
    con.execute(
        f"CREATE VIEW cpu AS SELECT * FROM read_parquet({source}, union_by_name = true)"
    )
    medians = {}
    for query in queries:
        result = con.execute(query["sql"])
        answer = {
            "columns": [column[0] for column in result.description],
            "data": [[json_cell(v) for v in row] for row in result.fetchall()],
        }
        with open(os.path.join(answers, query["name"] + ".json"), "w") as out:
            # NaN has no JSON form: fail here rather than write what serde_json rejects.
            json.dump(answer, out, allow_nan=False)
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
