"""ClickHouse 26.9 (chdb-core, in process) against the shared ClickHouse 18.16.

Run by tests/clickhouse_current.rs, which says what is checked and why; by
hand: `python check.py MANIFEST.json` with the venv's python (chdb-core and
the standard library only). The manifest names the 18.16 server and the
database the real sink filled there, the migrations' statements as the
migration runner renders them, and the RowBinary files exported from that
database.

Steps, each timed and printed as a table at the end (also written to the
manifest's `report` path):

1. Create the database and apply every migration's statements on 26.9.
2. Load the RowBinary files into 26.9 (the materialized views derive
   `touchpoint_metrics` and `customer_profile` there, as 18.16's did).
3. Run the same queries on both servers and compare: every ```sql query in
   docs/clickhouse.md, `SELECT *` of every view, and the contents of every
   table (aggregate states merged per key, ReplacingMergeTree read FINAL).

Comparison: results as TabSeparatedWithNames; column names must match;
cells equal as text, except numbers where either side has a fraction or an
exponent (Float64 sums whose addition order depends on how rows fell into
insert blocks), which may differ by 1e-9 relative (absolute below 1);
`nan` equals `nan`. Rows are compared in the order returned; when that
differs, as multisets, and then, for a query with ORDER BY on output
columns, the sequence of its sort keys must still be the same on both (rows
with equal keys come back in any order). A query ending in LIMIT whose rows
differ is run again without the LIMIT: the rows a LIMIT keeps among ties are
the server's choice, so then the full results must be equal and each
server's limited rows must be among them. Columns computed by `any(...)`
(an arbitrary value of the group, by definition) are left out of the
comparison and named in the table, as are columns filled by now() at insert
(`inserted_at`, `applied_at`), in tables and in the views that pass them
through (`events_latest`). A query answering no rows on both servers fails:
it compared nothing.

Exit status 0 when every statement ran and every comparison held, else 1.
"""

import json
import math
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request


class QueryError(Exception):
    pass


class Result:
    def __init__(self, raw):
        lines = raw.split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        self.names = lines[0].split(b"\t") if lines else []
        self.rows = [line.split(b"\t") for line in lines[1:]]


class Old:
    """The 18.16 server, over HTTP."""

    def __init__(self, url, database):
        self.url = url.rstrip("/") + "/?" + urllib.parse.urlencode({"database": database})

    def raw(self, sql):
        req = urllib.request.Request(self.url, data=sql.encode(), method="POST")
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                return r.read()
        except urllib.error.HTTPError as e:
            raise QueryError(e.read().decode(errors="replace").strip()) from None

    def run(self, sql):
        return Result(self.raw(sql + "\nFORMAT TabSeparatedWithNames"))

    def scalar(self, sql):
        return self.raw(sql + "\nFORMAT TabSeparated").decode().strip()


class New:
    """ClickHouse 26.9, in this process."""

    def __init__(self, path):
        from chdb import session

        self.s = session.Session(path)

    def raw(self, sql, fmt="TabSeparated"):
        try:
            return self.s.query(sql, fmt).bytes()
        except Exception as e:  # chdb raises its own error types
            raise QueryError(str(e).strip()) from None

    def run(self, sql):
        return Result(self.raw(sql, "TabSeparatedWithNames"))

    def scalar(self, sql):
        return self.raw(sql).decode().strip()


# ---------------------------------------------------------------- comparing

NUMBER = re.compile(rb"^-?(?:nan|inf|\d+(?:\.\d*)?(?:[eE][+-]?\d+)?)$")
REL = 1e-9


def fractional(cell):
    return any(c in cell for c in b".eEni")


def close(a, b):
    x, y = float(a), float(b)
    if math.isnan(x) or math.isnan(y):
        return math.isnan(x) and math.isnan(y)
    return abs(x - y) <= REL * max(1.0, abs(x), abs(y))


def cell_eq(a, b):
    if a == b:
        return True
    if NUMBER.match(a) and NUMBER.match(b) and (fractional(a) or fractional(b)):
        return close(a, b)
    if a[:1] == b"[" and b[:1] == b"[" and a[-1:] == b"]" and b[-1:] == b"]":
        xs, ys = a[1:-1].split(b","), b[1:-1].split(b",")
        return len(xs) == len(ys) and all(cell_eq(x, y) for x, y in zip(xs, ys))
    return False


def row_eq(r, s, keep):
    return len(r) == len(s) and all(cell_eq(r[i], s[i]) for i in keep)


def sort_key(row, keep):
    # Rounded, so that rows whose float cells differ in the last digits
    # still sort alike on both sides.
    out = []
    for i in keep:
        c = row[i] if i < len(row) else b""
        if NUMBER.match(c) and fractional(c):
            x = float(c)
            c = b"nan" if math.isnan(x) else (b"%.6g" % x)
        out.append(c)
    return out


def rows_eq(a, b, keep):
    return len(a) == len(b) and all(row_eq(r, s, keep) for r, s in zip(a, b))


def first_difference(a, b, keep):
    for i, (r, s) in enumerate(zip(a, b)):
        if not row_eq(r, s, keep):
            return f"row {i}: 18.16 {show(r)} / 26.9 {show(s)}"
    return f"18.16 {len(a)} rows / 26.9 {len(b)} rows"


def show(row):
    text = b"\t".join(row).decode(errors="replace")
    return text if len(text) < 300 else text[:300] + "…"


def contained(small, big, keep):
    rest = sorted(big, key=lambda r: sort_key(r, keep))
    for r in small:
        hit = next((j for j, s in enumerate(rest) if row_eq(r, s, keep)), None)
        if hit is None:
            return False
        rest.pop(hit)
    return True


ANY_ALIAS = re.compile(r"\bany\s*\([^()]*\)\s+AS\s+(\w+)", re.IGNORECASE)
ORDER_BY = re.compile(r"\bORDER\s+BY\b", re.IGNORECASE)
TRAILING_LIMIT = re.compile(r"\s+LIMIT\s+\d+\s*$", re.IGNORECASE)


def compare(old, new, sql):
    """(ok, rows, note) for one query on both servers."""
    try:
        o = old.run(sql)
    except QueryError as e:
        return False, "-", f"18.16 failed: {e}"
    try:
        n = new.run(sql)
    except QueryError as e:
        return False, "-", f"26.9 failed: {e}"
    if o.names != n.names:
        return False, "-", f"columns differ: 18.16 {show(o.names)} / 26.9 {show(n.names)}"
    arbitrary = {a.encode() for a in ANY_ALIAS.findall(sql)}
    keep = [i for i, name in enumerate(o.names) if name not in arbitrary]
    note = ""
    if arbitrary:
        note = "any() not compared: " + ", ".join(sorted(a.decode() for a in arbitrary))
    rows = len(o.rows)
    if rows_eq(o.rows, n.rows, keep):
        return True, rows, join("same", note)
    so = sorted(o.rows, key=lambda r: sort_key(r, keep))
    sn = sorted(n.rows, key=lambda r: sort_key(r, keep))
    if rows_eq(so, sn, keep):
        if not ORDER_BY.search(sql):
            return True, rows, join("same rows (no ORDER BY: compared sorted)", note)
        keys = order_keys(sql, o.names)
        if keys is None:
            return True, rows, join("same rows, order differs (ORDER BY not checked)", note)
        if rows_eq(o.rows, n.rows, keys):
            return True, rows, join("same rows, same ORDER BY keys, order differs among ties", note)
        return False, rows, "ORDER BY differs: " + first_difference(o.rows, n.rows, keys)
    if TRAILING_LIMIT.search(sql) and len(o.rows) == len(n.rows):
        full = TRAILING_LIMIT.sub("", sql)
        try:
            fo, fn = old.run(full), new.run(full)
        except QueryError as e:
            return False, rows, f"DIFFERENT, and without LIMIT it failed: {e}"
        fo_s = sorted(fo.rows, key=lambda r: sort_key(r, keep))
        fn_s = sorted(fn.rows, key=lambda r: sort_key(r, keep))
        if (
            rows_eq(fo_s, fn_s, keep)
            and contained(o.rows, fn.rows, keep)
            and contained(n.rows, fo.rows, keep)
        ):
            return True, rows, join(
                f"same without LIMIT ({len(fo.rows)} rows); LIMIT picks differ among ties", note
            )
    return False, rows, "DIFFERENT: " + first_difference(so, sn, keep)


def order_keys(sql, names):
    """Positions of the output columns the last ORDER BY sorts on, or None
    when it sorts on anything but plain output columns."""
    clause = ORDER_BY.split(sql)[-1]
    clause = TRAILING_LIMIT.sub("", clause)
    keys = []
    for item in clause.split(","):
        words = item.split()
        if len(words) == 2 and words[1].upper() in ("ASC", "DESC"):
            words = words[:1]
        if len(words) != 1 or words[0].encode() not in names:
            return None
        keys.append(names.index(words[0].encode()))
    return keys


def join(a, b):
    return f"{a}; {b}" if b else a


# ------------------------------------------------------------ what to run


def doc_queries(path):
    """Every statement in the ```sql blocks: (line, title, sql)."""
    out = []
    heading, title, lines, start, in_sql = "", None, [], 0, False
    with open(path, encoding="utf-8") as f:
        for no, line in enumerate(f, 1):
            s = line.rstrip("\n")
            if not in_sql:
                if s.startswith("#"):
                    heading = s.lstrip("# ").strip()
                in_sql = s.strip() == "```sql"
                title, lines = None, []
                continue
            if s.strip() == "```":
                if lines:
                    out.append((start, title or heading, "\n".join(lines)))
                in_sql = False
                continue
            t = s.strip()
            if t.startswith("--"):
                if not lines and title is None:
                    title = t.lstrip("- ").strip()
                continue
            if not t and not lines:
                continue
            if not lines:
                start = no
            lines.append(s)
            if t.endswith(";"):
                lines[-1] = s.rstrip().rstrip(";")
                out.append((start, title or heading, "\n".join(lines)))
                title, lines = None, []
    return out


def content_query(new, db, table, engine):
    """A query reading a table's whole content comparably on both servers."""
    cols = Result(
        new.raw(
            "SELECT name, type, default_expression, default_kind FROM system.columns "
            f"WHERE database = '{db}' AND table = '{table}' ORDER BY position",
            "TabSeparatedWithNames",
        )
    ).rows
    # Columns filled by now() at insert time differ between the servers;
    # ALIAS columns are computed, and exist only where a feature-gated
    # migration added them (checked on their own, below).
    cols = [(n.decode(), t.decode()) for n, t, d, k in cols if d != b"now()" and k != b"ALIAS"]
    aggregates = [(n, t) for n, t in cols if t.startswith("AggregateFunction(")]
    if aggregates:
        keys = [n for n, t in cols if not t.startswith("AggregateFunction(")]
        merged = [merge_expr(n, t) + f" AS {n}" for n, t in aggregates]
        return (
            f"SELECT {', '.join(keys + merged)} FROM {table} "
            f"GROUP BY {', '.join(keys)}"
        )
    final = " FINAL" if "ReplacingMergeTree" in engine else ""
    return f"SELECT {', '.join(n for n, _ in cols)} FROM {table}{final}"


def view_query(new, db, view, now_filled):
    """`SELECT *` of a view, less the columns it passes through from a
    table that fills them by now() at insert (they differ between servers)."""
    cols = [
        n.decode()
        for (n,) in Result(
            new.raw(
                f"SELECT name FROM system.columns WHERE database = '{db}' AND table = '{view}' "
                "ORDER BY position",
                "TabSeparatedWithNames",
            )
        ).rows
    ]
    if not any(c in now_filled for c in cols):
        return f"SELECT * FROM {view}"
    return f"SELECT {', '.join(c for c in cols if c not in now_filled)} FROM {view}"


def merge_expr(col, typ):
    """`AggregateFunction(quantiles(0.5, 0.9), Float64)` → `quantilesMerge(0.5, 0.9)(col)`."""
    inner, depth = typ[len("AggregateFunction(") :], 0
    for i, c in enumerate(inner):
        depth += c == "("
        depth -= c == ")"
        if c == "," and depth == 0:
            func = inner[:i].strip()
            break
    if "(" in func:
        name, params = func.split("(", 1)
        return f"{name}Merge({params}({col})"
    return f"{func}Merge({col})"


# ------------------------------------------------------------------- main


def main():
    manifest = json.load(open(sys.argv[1], encoding="utf-8"))
    db = manifest["database"]
    old = Old(manifest["clickhouse_18"], db)
    # chdb takes its server time zone from the process: match 18.16's, or
    # toDate / toStartOfHour / today() would differ.
    os.environ["TZ"] = old.scalar("SELECT timezone()")
    time.tzset()
    t0 = time.monotonic()
    new = New(manifest["chdb_path"])
    import chdb

    versions = (old.scalar("SELECT version()"), new.scalar("SELECT version()"))
    zones = (old.scalar("SELECT timezone()"), new.scalar("SELECT timezone()"))
    failures = 0
    out = []

    def say(line=""):
        out.append(line)

    say(
        f"ClickHouse {versions[1]} (chdb-core {chdb.__version__}, in process) "
        f"vs {versions[0]} (server), database {db}, time zone {zones[0]}"
    )
    if zones[0] != zones[1]:
        say(f"  FAILED: time zones differ ({zones[0]} / {zones[1]})")
        failures += 1

    # 1. Schema.
    for stmt in manifest["setup"]:
        new.raw(stmt)
    say("")
    say(f"{'migration':<28} {'statements':>10}  result on {versions[1]}")
    for m in manifest["migrations"]:
        errors = []
        for stmt in m["statements"]:
            try:
                new.raw(stmt)
            except QueryError as e:
                errors.append(f"{stmt.splitlines()[0]} … → {str(e).splitlines()[0]}")
        failures += len(errors)
        result = "applied" if not errors else "FAILED: " + " | ".join(errors)
        say(f"{m['version']:04} {m['name']:<23} {len(m['statements']):>10}  {result}")
    t_schema = time.monotonic() - t0

    # 2. Rows.
    t1 = time.monotonic()
    new.raw(f"USE {db}")
    say("")
    say(f"{'table':<28} {'rows':>10}  loaded as RowBinary (columns as the sink names them)")
    for t in manifest["tables"]:
        columns = ", ".join(t["columns"])
        try:
            new.raw(f"INSERT INTO {db}.{t['table']} ({columns}) FROM INFILE '{t['file']}' FORMAT RowBinary")
            got = int(new.scalar(f"SELECT count() FROM {db}.{t['table']}"))
            result = "loaded" if got == t["rows"] else f"FAILED: {got} rows in 26.9, {t['rows']} exported"
        except QueryError as e:
            result = f"FAILED: {e}"
        failures += not result.startswith("loaded")
        say(f"{t['table']:<28} {t['rows']:>10}  {result} ({os.path.getsize(t['file'])} bytes)")
    t_load = time.monotonic() - t1

    # 3. Queries.
    t2 = time.monotonic()
    doc = "/".join(manifest["doc"].split("/")[-2:])
    queries = [(f"{doc}:{line}", title, sql) for line, title, sql in doc_queries(manifest["doc"])]
    doc_count = len(queries)
    objects = Result(
        new.raw(
            f"SELECT name, engine FROM system.tables WHERE database = '{db}' ORDER BY name",
            "TabSeparatedWithNames",
        )
    ).rows
    now_filled = {
        n.decode()
        for (n,) in Result(
            new.raw(
                f"SELECT DISTINCT name FROM system.columns WHERE database = '{db}' "
                "AND default_expression = 'now()'",
                "TabSeparatedWithNames",
            )
        ).rows
    }
    for name, engine in ((n.decode(), e.decode()) for n, e in objects):
        if engine == "View":
            queries.append(("view", name, view_query(new, db, name, now_filled)))
        elif engine != "MaterializedView":
            queries.append(("table", name, content_query(new, db, name, engine)))
    if doc_count == 0:
        say("FAILED: no ```sql query found in " + manifest["doc"])
        failures += 1
    say("")
    say(f"{'query':<24} {'what':<48} {'rows':>6}  {versions[0]} = {versions[1]}?")
    for where, title, sql in queries:
        ok, rows, note = compare(old, new, sql)
        if ok and rows == 0:
            # Nothing compared: the test's data must reach every query.
            ok, note = False, "no rows on either server: the data does not reach this query"
        failures += not ok
        short = title if len(title) <= 48 else title[:47] + "…"
        say(f"{where:<24} {short:<48} {rows:>6}  {'' if ok else 'FAILED: '}{note}")
    t_queries = time.monotonic() - t2

    # 4. What only a current release has (migrations 18.16 skipped).
    checks = manifest.get("checks", [])
    if checks:
        say("")
        say(f"{'check on ' + versions[1]:<73} result")
    for c in checks:
        try:
            got = new.scalar(c["sql"])
            ok = got == "1"
            note = "ok" if ok else f"FAILED: answered {got!r}, not 1"
        except QueryError as e:
            ok, note = False, f"FAILED: {str(e).splitlines()[0]}"
        failures += not ok
        say(f"{c['what']:<73} {note}")

    say("")
    say(
        f"{len(manifest['migrations'])} migrations, {sum(t['rows'] for t in manifest['tables'])} rows, "
        f"{len(queries)} queries compared ({doc_count} from docs/clickhouse.md, "
        f"{sum(1 for q in queries if q[0] == 'view')} views, {sum(1 for q in queries if q[0] == 'table')} tables); "
        f"schema {t_schema:.1f} s, load {t_load:.1f} s, queries {t_queries:.1f} s; "
        + ("all the same" if failures == 0 else f"{failures} FAILED")
    )
    text = "\n".join(out) + "\n"
    sys.stdout.write(text)
    with open(manifest["report"], "w", encoding="utf-8") as f:
        f.write(text)
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
