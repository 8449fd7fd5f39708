#!/usr/bin/env python3
"""The SQL scope checker (docs/scaling.md, "The scope checker"): every SQL
statement the binaries send is listed and each is scoped by account_id or
is a documented exception in sql/scope-exceptions.txt. TAP; the list is
printed as comments (name, kind, reason).

Environment (tests/sql/meson.build): CP_SQL_SCOPE_DUMP (the compiled
sql-scope-dump), CP_BUILD_ROOT (compile_commands.json), CP_SOURCE_ROOT.
Needs no database."""
import os
import re
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sqlscope  # noqa: E402

root = os.environ.get('CP_SOURCE_ROOT') or os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
build = os.environ.get('CP_BUILD_ROOT') or os.path.join(root, 'build')
dump = os.environ.get('CP_SQL_SCOPE_DUMP') or os.path.join(build, 'tests/sql/sql-scope-dump')

n = 0
failed = 0


def ok(cond, what, diag=()):
    global n, failed
    n += 1
    print('%s %d - %s' % ('ok' if cond else 'not ok', n, what))
    if not cond:
        failed += 1
        for d in list(diag)[:60]:
            print('#   ' + str(d))


stmts, sites, wrappers, problems = sqlscope.collect(dump, root, build)
schema = sqlscope.Schema(os.path.join(root, 'sql/expected/schema.txt'))
sqlscope.classify(dump, schema, stmts)
exc = sqlscope.load_exceptions(os.path.join(root, 'sql/scope-exceptions.txt'))
unlisted, stale = sqlscope.judge(stmts, exc)

# 1. the statements table and the migrations, compiled in: all of them
enum = open(os.path.join(root, 'common/store/store-int.h')).read()
enum = enum[enum.index('typedef enum cp_store_stmt'):enum.index('} cp_store_stmt;')]
n_enum = len(re.findall(r'^\s+ST_\w+,', enum, re.M))
n_table = sum(1 for s in stmts if s['sources'][0].startswith('common/store/store.c statements'))
n_mig = len([f for f in os.listdir(os.path.join(root, 'sql/migrations')) if f.endswith('.sql')])
n_migs = sum(1 for s in stmts if s['name'].startswith('migration:'))
ok(n_table == n_enum and n_table > 0, 'the prepared statements table printed whole: %d of %d' % (n_table, n_enum))
ok(n_migs == n_mig, 'every migration listed: %d of %d' % (n_migs, n_mig))

# 2. self-check of the extraction: every call of a sink in a function body
# is a resolved call site or a wrapper forwarding its own parameter; every
# other mention of a sink is its definition or prototype
global_sinks = set(sqlscope.BASE_SINKS) | {w[1] for w in wrappers if not w[4]}
calls_in_bodies, outside = 0, []
for d in sqlscope.SCAN_DIRS:
    for dirpath, _, names in os.walk(os.path.join(root, d)):
        for name in names:
            if not name.endswith('.c'):
                continue
            path = os.path.join(dirpath, name)
            sinks = global_sinks | {w[1] for w in wrappers if w[4] and w[0] == os.path.relpath(path, root)}
            src = sqlscope.strip_directives(sqlscope.strip_comments(open(path).read()))
            funcs = sqlscope.functions(src)
            spans = [(f.body_start, f.body_start + len(f.body)) for f in funcs]
            for m in re.finditer(r'(?<![\w.>])(' + '|'.join(sorted(sinks)) + r')\s*\(', src):
                if any(a <= m.start() < b for a, b in spans):
                    calls_in_bodies += 1
                else:
                    line = src[src.rfind('\n', 0, m.start()) + 1:src.find('\n', m.start())]
                    if not re.search(r'\b(int|void|char|bool|cp_store_rows|PGresult|static)\b', line):
                        outside.append('%s: %s' % (os.path.relpath(path, root), line.strip()))
forwarding = sqlscope.COUNTS['forward'] + sqlscope.COUNTS['table']
ok(not problems, 'every call that sends SQL resolved to its text (%d call sites, %d wrappers found)'
   % (len(sites), len(wrappers)), problems)
ok(len(sites) + forwarding == calls_in_bodies and not outside,
   'the call sites found (%d) plus forwarding and table calls (%d) account for every call of a sink in a function body (%d)'
   % (len(sites), forwarding, calls_in_bodies), outside)
n_site_sql = sum(len(s.sqls) for s in sites)
ok(n_site_sql >= len(sites), 'at least one statement per call site: %d statements from %d call sites'
   % (n_site_sql, len(sites)))
# PQexec & co. only where the scan looks
pq = []
for dirpath, _, names in os.walk(root):
    if '/build' in dirpath or '/.git' in dirpath or '/tests' in dirpath[len(root):][:6]:
        continue
    for name in names:
        if name.endswith(('.c', '.h')):
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root)
            if rel.split('/')[0] in sqlscope.SCAN_DIRS:
                continue
            txt = open(p, errors='replace').read()
            if re.search(r'\bPQ(exec|sendQuery|prepare|sendPrepare|execParams)\w*\s*\(', txt):
                pq.append(rel)
ok(not pq, 'no libpq call outside the scanned folders (%s)' % ', '.join(sqlscope.SCAN_DIRS), pq)

# 3. PostgreSQL's parser reads every statement
unparsed = [s for s in stmts if s['kind'] == 'unparsed']
ok(not unparsed, 'every statement parses (%d statements)' % len(stmts),
   ['%s: %s' % (s['name'], s['why']) for s in unparsed])

# 4, 5. the rule
ok(not unlisted, 'every unscoped statement is a listed exception',
   ['%s (%s): %s' % (s['name'], ', '.join(s['sources']), s['why']) for s in unlisted])
ok(not stale, 'no stale exception (each names an unscoped statement)', stale)

# 6. the rule can fail: statements it must refuse, and ones it must accept
ck = sqlscope.Checker(schema)


def kind_of(sql):
    t = sqlscope.run_dump(dump, 'parse', stdin=sqlscope.json.dumps([sql]))[0]
    return ck.statement(t['tree']).kind if 'tree' in t else 'unparsed'


refused = [
    "SELECT * FROM peers WHERE key = $1",
    "UPDATE peers SET name = $2 WHERE id = $1",
    "DELETE FROM groups WHERE id = $1",
    "INSERT INTO groups (id, name) VALUES ($1, $2)",
    "SELECT g.id FROM groups g JOIN group_peers gp ON gp.group_id = g.id WHERE g.account_id = $1",
    "SELECT p.id FROM peers p WHERE p.account_id = $1 AND EXISTS (SELECT 1 FROM routes r WHERE r.peer = p.id)",
    "WITH x AS (SELECT id FROM peers WHERE ip = $1) SELECT * FROM x",
    "SELECT * FROM server_keys WHERE purpose = $1",
    "SELECT pg_advisory_xact_lock(42)",
    "SELECT a.id FROM msp_tenants t JOIN accounts a ON a.id = t.msp_account_id WHERE t.account_id = $1",
    "SELECT 1 FROM peers p, users u WHERE p.account_id = $1 AND u.account_id = $2",
]
accepted = [
    "SELECT * FROM peers WHERE account_id = $1 AND key = $2",
    "SELECT g.id FROM groups g JOIN group_peers gp ON gp.account_id = g.account_id AND gp.group_id = g.id"
    " WHERE g.account_id = $1",
    "SELECT p.id FROM peers p WHERE p.account_id = $1 AND EXISTS (SELECT 1 FROM routes r"
    " WHERE r.account_id = p.account_id AND r.peer = p.id)",
    "WITH d AS (DELETE FROM peers WHERE account_id = $1 AND id = $2 RETURNING *)"
    " INSERT INTO events (activity, initiator_id, target_id, account_id, meta)"
    " SELECT 1, 'sys', d.id, d.account_id, '{}' FROM d",
    "UPDATE accounts SET network_serial = network_serial + 1 WHERE id = $1",
    "INSERT INTO groups (id, account_id, name) VALUES ($1, $2, $3)",
    "SELECT 1",
]
bad = [q for q in refused if kind_of(q) != 'unscoped']
ok(not bad, 'the rule refuses %d unscoped statements' % len(refused), bad)
bad = [q for q in accepted if kind_of(q) == 'unscoped']
ok(not bad, 'the rule accepts %d scoped statements' % len(accepted), bad)

# 7. the extraction cannot be dodged: a wrapper is found and its callers
# become call sites; SQL that resolves to nothing constant is a problem
with tempfile.TemporaryDirectory() as d:
    sample = os.path.join(d, 'sample.c')
    open(sample, 'w').write('''
#define SQL_BAD "SELECT * FROM peers WHERE key = $1"
typedef struct cp_store_tx cp_store_tx;
int cp_store_tx_exec(cp_store_tx *tx, const char *sql, int n, const char *const *p, void **r, void *e);
static int hidden(cp_store_tx *tx, const char *q) {
        return cp_store_tx_exec(tx, q, 0, 0, 0, 0);
}
int snprintf(char *s, unsigned long n, const char *f, ...);
int caller(cp_store_tx *tx, int id) {
        char runtime[64];
        snprintf(runtime, sizeof runtime, "SELECT * FROM peers WHERE id = '%d'", id);
        hidden(tx, SQL_BAD);
        return hidden(tx, runtime);
}
''')
    pp = sqlscope.Preprocessor(build)
    s_sites, s_wrappers, = sqlscope.scan_sources(d, pp, dirs=['.'])
    names = [w[1] for w in s_wrappers]
    good = [x for x in s_sites if x.sqls]
    bad = [x for x in s_sites if x.problem]
    ok(names == ['hidden'] and len(good) == 1 and len(bad) == 1
       and kind_of(good[0].sqls[0][1]) == 'unscoped',
       'a hidden wrapper is found, its constant caller checked, its runtime caller reported',
       [names, [(x.func, x.sqls, x.problem) for x in s_sites]])

# 8. the exception list is checked both ways
fake = dict(exc)
fake['no-such-statement'] = 'reason'
victim = next(iter(exc))
del fake[victim]
u2, s2 = sqlscope.judge([dict(s) for s in stmts], fake)
ok('no-such-statement' in s2 and any(sqlscope.exception_for(s['name'], {victim: ''})[0] for s in u2),
   'a stale exception and an unlisted unscoped statement are both caught')

# the list
counts = {}
for s in stmts:
    k = s['kind'] if s['kind'] != 'unscoped' else 'exception'
    counts[k] = counts.get(k, 0) + 1
print('# %d statements: %s' % (len(stmts), ', '.join('%s %d' % kv for kv in sorted(counts.items()))))
for s in stmts:
    if s['kind'] == 'unscoped':
        tag = 'exception(%s)' % s.get('exception', '?')
    else:
        tag = s['kind']
    print('# %-64s %s' % (s['name'], tag))
print('1..%d' % n)
sys.exit(1 if failed else 0)
