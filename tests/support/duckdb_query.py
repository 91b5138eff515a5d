"""Runs DuckDB SQL for the archive tests and prints the results as JSON.

stdin: {"setup": ["sql script", ...], "queries": ["select ...", ...]}
stdout: {"results": [[{column: value, ...}, ...], ...]}

Values: DECIMAL -> exact text, DATE -> "YYYY-MM-DD", BLOB -> base64, MAP ->
object, LIST -> array. Timestamps must be converted in SQL (epoch_ms), so
that no time zone library is needed.
"""
import base64
import datetime
import decimal
import json
import sys

try:
    import duckdb
except ImportError:
    print("duckdb is not installed: run scripts/install-test-tools.sh", file=sys.stderr)
    sys.exit(3)


def plain(v):
    if isinstance(v, decimal.Decimal):
        return str(v)
    if isinstance(v, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(v)).decode("ascii")
    if isinstance(v, datetime.datetime):
        raise TypeError("timestamps must be converted with epoch_ms() in SQL")
    if isinstance(v, datetime.date):
        return v.isoformat()
    if isinstance(v, dict):
        return {str(k): plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    return v


def main():
    req = json.load(sys.stdin)
    con = duckdb.connect()
    for script in req.get("setup", []):
        con.execute(script)
    results = []
    for q in req.get("queries", []):
        cur = con.execute(q)
        names = [d[0] for d in cur.description]
        results.append([dict(zip(names, map(plain, row))) for row in cur.fetchall()])
    json.dump({"results": results}, sys.stdout)


main()
