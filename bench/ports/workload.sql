-- SQLite workload for bench/ports.py: in-memory tables, an index, sorts,
-- a join, grouping, and an extension function (rot13) called per row.
PRAGMA temp_store = MEMORY;
CREATE TABLE t(id INTEGER PRIMARY KEY, a INTEGER, b TEXT);
WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 200000)
INSERT INTO t SELECT x, (x * 7919) % 10007, printf('row-%06d', (x * 31) % 100003) FROM c;
CREATE INDEX t_a ON t(a);
SELECT count(*), sum(a), min(b), max(b) FROM t;
SELECT a % 10 AS k, count(*), sum(length(b)) FROM t GROUP BY k ORDER BY k;
SELECT count(*) FROM t AS x JOIN t AS y ON x.a = y.id WHERE y.a < 5000;
SELECT b FROM t ORDER BY b DESC, id LIMIT 3;
SELECT count(DISTINCT r), max(r) FROM (SELECT rot13(b) AS r FROM t);
SELECT rot13('Hello, wasmrun');
