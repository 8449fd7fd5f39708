"""sqlscope: lists every SQL statement the binaries send and decides, with
PostgreSQL's own parser, whether each is scoped by account_id.

Used by tests/sql/test_sql_scope.py (the test) and runnable by hand:

    python3 tests/sql/sqlscope.py BUILDDIR      # the list, one line each

Sources of statements (docs/scaling.md, "The scope checker"):
  1. the store's named prepared statements and the migrations, printed
     exactly by the compiled tests/sql/sql-scope-dump (`table`);
  2. every other call that hands SQL text to libpq, found in the C sources
     of common/ and services/: calls of the sinks below and of every
     function that forwards its own parameter to a sink (found
     automatically, so a new wrapper cannot hide its callers). The SQL
     argument is resolved mechanically: string literals and macros are
     expanded by the C preprocessor with the file's own compile flags
     (compile_commands.json); `a ? X : Y` gives both; a local variable
     gives every value assigned to it in the function; a file-scope
     constant its initializer; a struct field (t->sql) every value given
     to that field in the file's initializers; a cp_strbuf (q.buf) the
     concatenation of everything appended to it in the function, in
     source order (its maximal form; %s of a non-constant becomes an
     identifier). A call whose argument resolves to nothing is an error.

The scope rule, applied to the parse tree of each statement (every
query level: CTEs, subqueries, sub-links, INSERT ... SELECT):
  - a tenant table is one with an account_id column (the schema golden
    file sql/expected/schema.txt); accounts is the root, scoped by id;
  - a relation r of a tenant table is ANCHORED when a top-level AND term
    of its query level's WHERE or of a JOIN ... ON is
        r.account_id = X    (accounts: r.id = X), or = ANY(X), or IN (...)
    where X is a parameter or constant, a column of an anchored relation
    (r.account_id = other.account_id, or other.id for accounts), a column
    of an anchored CTE or sub-select, or a sub-select that is itself scoped;
    relations of an enclosing query level that are anchored count
    (correlated sub-queries); a CTE or FROM sub-select is anchored when
    its own query is scoped;
  - an INSERT into a tenant table names account_id (accounts: id) and
    gives it a parameter or constant, or takes it from a scoped SELECT;
  - a statement is SCOPED when every relation of a tenant table at every
    level is anchored and it reads or writes no global table; NO-TABLE
    when it touches no table at all (SELECT 1, BEGIN); everything else
    (a tenant table not anchored, any global table, any pg_advisory_*
    lock, two different account parameters or an anchor through
    msp_account_id, DDL) is UNSCOPED and must be listed in
    sql/scope-exceptions.txt with its reason. A primary key alone does
    not scope a row: Citus cannot route it without account_id.
"""
import fnmatch
import json
import os
import re
import subprocess
import sys
import tempfile

# Functions that send SQL text, by the index of their SQL argument.
BASE_SINKS = {
    "PQexec": 1, "PQexecParams": 1, "PQsendQuery": 1, "PQsendQueryParams": 1, "PQprepare": 2,
    "PQsendPrepare": 2, "cp_store_tx_exec": 1, "cp_store_exec1": 1, "cp_store__command": 1,
}
# Sinks whose SQL comes from a table printed exactly by sql-scope-dump:
# store.c's prepare() (the statements table) and store-migrate.c's
# migration loop (cp_store__migrations).
TABLE_ARGS = {("store.c", "statements[st].sql"), ("store.c", "statements[st].name"),
              ("store-migrate.c", "mig->sql")}
# Statements that are pipelined by store-tx.c's begin: "BEGIN" is a
# literal there and found like any other.
SCAN_DIRS = ["common", "services"]
# Calls of a sink that scan_sources() did not turn into call sites, by why:
# forward (a wrapper passing its own parameter on), table (store.c's
# prepare and the migration loop, whose SQL sql-scope-dump prints).
COUNTS = {}


# ---------------------------------------------------------------- C scanning

def strip_comments(src):
    """C source with comments replaced by spaces (newlines kept), strings intact."""
    out = []
    i, n = 0, len(src)
    while i < n:
        c = src[i]
        if c == '/' and i + 1 < n and src[i + 1] == '*':
            j = src.find('*/', i + 2)
            j = n if j < 0 else j + 2
            out.append(re.sub(r'[^\n]', ' ', src[i:j]))
            i = j
        elif c == '/' and i + 1 < n and src[i + 1] == '/':
            j = src.find('\n', i)
            j = n if j < 0 else j
            out.append(' ' * (j - i))
            i = j
        elif c in '"\'':
            j = i + 1
            while j < n and src[j] != c:
                j += 2 if src[j] == '\\' else 1
            out.append(src[i:j + 1])
            i = j + 1
        else:
            out.append(c)
            i += 1
    return ''.join(out)


def strip_directives(src):
    """Preprocessor lines (with their continuations) blanked, newlines kept."""
    return re.sub(r'(?m)^[ \t]*#(?:[^\n]*\\\n)*[^\n]*',
                  lambda m: re.sub(r'[^\n]', ' ', m.group(0)), src)


def skip_string(s, i):
    q = s[i]
    j = i + 1
    while j < len(s) and s[j] != q:
        j += 2 if s[j] == '\\' else 1
    return j + 1


def match_paren(s, i):
    """s[i] is an opening bracket; index after its closing one."""
    depth = 0
    while i < len(s):
        c = s[i]
        if c in '"\'':
            i = skip_string(s, i)
            continue
        if c in '([{':
            depth += 1
        elif c in ')]}':
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    raise ValueError("unbalanced")


def split_top(s, sep=','):
    """Splits s at top-level sep characters."""
    parts, depth, cur, i = [], 0, [], 0
    while i < len(s):
        c = s[i]
        if c in '"\'':
            j = skip_string(s, i)
            cur.append(s[i:j])
            i = j
            continue
        if c in '([{':
            depth += 1
        elif c in ')]}':
            depth -= 1
        if c == sep and depth == 0:
            parts.append(''.join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    parts.append(''.join(cur))
    return [p.strip() for p in parts]


def split_ternary(e):
    """'a ? X : Y' (top level) -> [X, Y] recursively; else [e]."""
    depth, q = 0, -1
    i = 0
    while i < len(e):
        c = e[i]
        if c in '"\'':
            i = skip_string(e, i)
            continue
        if c in '([{':
            depth += 1
        elif c in ')]}':
            depth -= 1
        elif c == '?' and depth == 0 and q < 0:
            q = i
        elif c == ':' and depth == 0 and q >= 0:
            return split_ternary(e[q + 1:i].strip()) + split_ternary(e[i + 1:].strip())
        i += 1
    e = e.strip()
    while e.startswith('(') and match_paren(e, 0) == len(e):
        e = e[1:-1].strip()
    return [e]


class Function:
    def __init__(self, name, params, body, body_start, static):
        self.name, self.params, self.body, self.body_start, self.static = name, params, body, body_start, static


def functions(src):
    """Function definitions of comment-free C source: name, parameter names, body."""
    out = []
    i, n, depth = 0, len(src), 0
    last_top = 0
    while i < n:
        c = src[i]
        if c in '"\'':
            i = skip_string(src, i)
            continue
        if c == '{' and depth == 0:
            head = src[last_top:i]
            end = match_paren(src, i)
            m = re.search(r'(\w+)\s*\(([^;{}]*)\)\s*(?:__attribute__\s*\(\(.*?\)\)\s*)*$', head, re.S)
            if m and m.group(1) not in ('if', 'for', 'while', 'switch'):
                params = []
                for p in split_top(m.group(2)):
                    pm = re.search(r'(\w+)\s*(\[[^\]]*\])?\s*$', p)
                    if pm and p not in ('void', '...'):
                        params.append(pm.group(1))
                out.append(Function(m.group(1), params, src[i:end], i,
                                    re.search(r'\bstatic\b', head[head.rfind('\n', 0, m.start()) + 1:]) is not None))
            i = end
            last_top = i
            continue
        if c == ';' and depth == 0:
            last_top = i + 1
        if c == '}':
            last_top = i + 1
        i += 1
    return out


def calls(body, name):
    """(args, offset) of every call of name in body."""
    for m in re.finditer(r'(?<![\w.>])' + re.escape(name) + r'\s*\(', body):
        start = m.end() - 1
        try:
            end = match_paren(body, start)
        except ValueError:
            continue
        yield split_top(body[start + 1:end - 1]), m.start()


# ---------------------------------------------------------------- preprocessing

class Preprocessor:
    """Expands constant C expressions (string literals, macros) with the
    file's own compile command."""

    def __init__(self, build_root):
        self.cmds = {}
        for e in json.load(open(os.path.join(build_root, 'compile_commands.json'))):
            path = os.path.normpath(os.path.join(e['directory'], e['file']))
            self.cmds[path] = e

    def flags(self, path):
        e = self.cmds.get(path)
        if not e:       # a file outside the build (the test's own samples)
            return 'cc', ['-std=gnu11'], os.path.dirname(path)
        argv = e['command'].split()
        keep = []
        skip = False
        for a in argv[1:]:
            if skip:
                skip = False
                continue
            if a in ('-o', '-MF', '-MQ', '-c'):
                skip = True
                continue
            if a.startswith(('-I', '-D', '-std', '-U', '-include', '-pthread')):
                keep.append(a)
        return argv[0], keep, e['directory']

    def expand(self, path, exprs):
        """Each expression expanded at the end of file path: a list of
        strings (the concatenated literal) or None when not constant."""
        return [literal_concat(r) if r is not None else None for r in self.expand_raw(path, exprs)]

    def expand_raw(self, path, exprs):
        """Each expression's text after preprocessing at the end of path."""
        if not exprs:
            return []
        cc, flags, cwd = self.flags(path)
        src = open(path).read()
        probe = [src, '\n']
        for i, e in enumerate(exprs):
            probe.append('\n__SQLSCOPE_BEGIN_%d__ %s __SQLSCOPE_END_%d__\n' % (i, e, i))
        with tempfile.NamedTemporaryFile('w', suffix='.c', delete=False) as f:
            f.write(''.join(probe))
            tmp = f.name
        try:
            out = subprocess.run([cc, '-E', '-P', '-iquote', os.path.dirname(path)] + flags + [tmp], cwd=cwd,
                                 capture_output=True, text=True)
        finally:
            os.unlink(tmp)
        if out.returncode != 0:
            raise RuntimeError("preprocessing %s failed: %s" % (path, out.stderr[:2000]))
        res = []
        for i in range(len(exprs)):
            m = re.search(r'__SQLSCOPE_BEGIN_%d__(.*?)__SQLSCOPE_END_%d__' % (i, i), out.stdout, re.S)
            res.append(m.group(1).strip() if m else None)
        return res


def template_exprs(tpl, out):
    """The C expressions a template needs expanded, appended to out."""
    for part in tpl:
        out.append(part[1])
        if part[0] == 'f':
            for a in part[2]:
                template_exprs(a, out)


def render(tpl, raw):
    """The SQL text of a template, from the expanded expressions raw."""
    text = []
    for part in tpl:
        r = raw.get(part[1])
        if part[0] == 'e':
            v = literal_concat(r) if r is not None else None
            if v is None:
                raise ValueError("not a constant string: %s" % part[1][:120])
            text.append(v)
        elif part[0] == 'f':
            v = literal_concat(r) if r is not None else None
            if v is None:
                raise ValueError("not a constant format: %s" % part[1][:120])
            text.append(c_format(v, [render(a, raw) for a in part[2]]))
        elif part[0] == 'i':
            # element part[3] of an array initializer, its field part[2]
            if r is None or not r.startswith('{'):
                raise ValueError("not an initializer: %s" % part[1][:120])
            elems = split_top(r[1:match_paren(r, 0) - 1])
            elem = elems[part[3]]
            fields = split_top(elem[1:match_paren(elem, 0) - 1]) if elem.startswith('{') else [elem]
            v = literal_concat(fields[part[2]]) if part[2] < len(fields) else None
            if v is None:
                raise ValueError("field %d of element %d is not a constant string" % (part[2], part[3]))
            text.append(v)
    return ''.join(text)


ESC = {'n': '\n', 't': '\t', '\\': '\\', '"': '"', "'": "'", '0': '\0', 'r': '\r'}


def literal_concat(text):
    """Adjacent C string literals -> their value; None if anything else."""
    text = text.strip()
    while text.startswith('(') and text.endswith(')') and match_paren(text, 0) == len(text):
        text = text[1:-1].strip()
    vals = []
    i = 0
    while i < len(text):
        c = text[i]
        if c.isspace():
            i += 1
            continue
        if c != '"':
            return None
        j = skip_string(text, i)
        body = text[i + 1:j - 1]
        vals.append(re.sub(r'\\(.)', lambda m: ESC.get(m.group(1), m.group(1)), body))
        i = j
    return ''.join(vals) if vals else None


# ---------------------------------------------------------------- extraction

class CallSite:
    def __init__(self, file, func, line, sink, arg):
        self.file, self.func, self.line, self.sink, self.arg = file, func, line, sink, arg
        self.sqls = []          # (label, sql)
        self.problem = None


IDENT = re.compile(r'^[A-Za-z_]\w*$')


def scan_sources(source_root, pp, dirs=SCAN_DIRS, extra_files=()):
    """Every call site of a sink, resolved. Returns (sites, wrappers)."""
    files = []
    for d in dirs:
        for root, _, names in os.walk(os.path.join(source_root, d)):
            for n in sorted(names):
                if n.endswith('.c'):
                    files.append(os.path.normpath(os.path.join(root, n)))
    files += list(extra_files)
    parsed = {}
    for f in files:
        src = strip_directives(strip_comments(open(f).read()))
        parsed[f] = (src, functions(src))

    # Wrappers: a function whose own parameter reaches a sink's SQL
    # argument. Global by name unless static (then per file).
    global_sinks = dict(BASE_SINKS)
    file_sinks = {f: {} for f in files}
    wrappers = []
    changed = True
    while changed:
        changed = False
        for f, (src, funcs) in parsed.items():
            sinks = dict(global_sinks)
            sinks.update(file_sinks[f])
            for fn in funcs:
                for sink, idx in list(sinks.items()):
                    for args, _ in calls(fn.body, sink):
                        if len(args) <= idx:
                            continue
                        for alt in split_ternary(args[idx]):
                            if alt in fn.params and (os.path.basename(f), alt) not in TABLE_ARGS:
                                pidx = fn.params.index(alt)
                                target = file_sinks[f] if fn.static else global_sinks
                                if target.get(fn.name) != pidx:
                                    target[fn.name] = pidx
                                    wrappers.append((os.path.relpath(f, source_root), fn.name, pidx, sink, fn.static))
                                    changed = True
    sites = []
    COUNTS.update(forward=0, table=0)
    for f, (src, funcs) in parsed.items():
        rel = os.path.relpath(f, source_root)
        sinks = dict(global_sinks)
        sinks.update(file_sinks[f])
        pending = []            # (site, label, expr)
        for fn in funcs:
            for sink, idx in sinks.items():
                for args, off in calls(fn.body, sink):
                    if len(args) <= idx:
                        continue
                    line = src.count('\n', 0, fn.body_start + off) + 1
                    site = CallSite(rel, fn.name, line, sink, args[idx])
                    alts = split_ternary(args[idx])
                    if any(a in fn.params for a in alts):
                        COUNTS['forward'] += 1
                        continue            # a wrapper forwarding its parameter: its callers are sites
                    if (os.path.basename(f), args[idx]) in TABLE_ARGS:
                        COUNTS['table'] += 1
                        continue            # the statements table / migrations: printed exactly
                    sites.append(site)
                    for a in alts:
                        for label, expr in resolve(a, fn, src):
                            if expr is None:
                                site.problem = "cannot resolve %r (%s)" % (a, label)
                            else:
                                tpl = expr if isinstance(expr, list) else [('e', expr)]
                                pending.append((site, label, tpl))
        exprs = []
        for _, _, tpl in pending:
            template_exprs(tpl, exprs)
        raw = dict(zip(exprs, pp.expand_raw(f, exprs))) if exprs else {}
        for site, label, tpl in pending:
            try:
                site.sqls.append((label, render(tpl, raw)))
            except ValueError as e:
                site.problem = str(e)
    return sites, wrappers


def assignments(name, body):
    """Right-hand sides of 'name = ...;' (declarations too) in body."""
    out = []
    for m in re.finditer(r'(?<![\w.>])' + re.escape(name) + r'\s*(\[\s*\])?\s*=(?!=)', body):
        i = m.end()
        j = i
        depth = 0
        while j < len(body):
            c = body[j]
            if c in '"\'':
                j = skip_string(body, j)
                continue
            if c in '([{':
                depth += 1
            elif c in ')]}':
                depth -= 1
            elif c in ';,' and depth == 0:
                break
            j += 1
        out.append(body[i:j].strip())
    return out


def file_scope(src, funcs):
    """The source outside function bodies."""
    parts, last = [], 0
    for fn in sorted(funcs, key=lambda f: f.body_start):
        parts.append(src[last:fn.body_start])
        last = fn.body_start + len(fn.body)
    parts.append(src[last:])
    return ''.join(parts)


def resolve(expr, fn, src, depth=0):
    """(label, constant C expression) pairs for one SQL argument; expr
    None when it cannot be resolved."""
    if depth > 6:
        return [(expr, None)]
    m = re.match(r'^(\w+)\.buf$', expr)
    if m:
        return [(m.group(1) + '.buf', strbuf_value(m.group(1), fn, src, depth))]
    if IDENT.match(expr):
        rhs = assignments(expr, fn.body)
        if not rhs:
            rhs = assignments(expr, file_scope(src, functions(src)))
        if not rhs:
            return [(expr, expr)]           # a macro, or a constant the preprocessor knows
        out = []
        for r in rhs:
            for alt in split_ternary(r):
                for label, e in resolve(alt, fn, src, depth + 1):
                    out.append((expr if label in (alt, 'literal') else label, e))
        return out
    m = re.match(r'^\w+\s*(->|\.)\s*(\w+)$', expr)
    if m:
        vals = field_values(m.group(2), src)
        if not vals:
            return [(expr, None)]
        return [('%s#%d' % (m.group(2), i + 1), v) for i, v in enumerate(vals)]
    if re.match(r'^\w+\s*\[', expr):
        return [(expr, None)]
    return [('literal', expr)]


def field_values(field, src):
    """Every value the file's initializers give struct field `field`:
    designated (.field = X) or positional in an array of a struct typedef
    of this file."""
    vals = []
    for m in re.finditer(r'\.\s*' + re.escape(field) + r'\s*=', src):
        rest = src[m.end():]
        vals.append(split_top(rest[:find_end(rest)])[0])
    if vals:
        return vals
    for sm in re.finditer(r'typedef\s+struct\s*\w*\s*\{(.*?)\}\s*(\w+)\s*;', src, re.S):
        names = []
        for decl in [x.strip() for x in sm.group(1).split(';') if x.strip()]:
            for d in decl.split(','):       # const char *a, *b;
                names.append(re.search(r'(\w+)\s*(\[[^\]]*\])?$', d.strip()).group(1))
        if field not in names:
            continue
        k = names.index(field)
        for am in re.finditer(r'\b' + sm.group(2) + r'\s+\w+\s*\[\s*\w*\s*\]\s*=\s*\{', src):
            start = am.end() - 1
            init = src[start:match_paren(src, start)]
            elems = [e for e in split_top(init[1:-1]) if e]
            vals += [[('i', init, k, i)] for i in range(len(elems))]
    return vals


def find_end(s):
    depth = 0
    i = 0
    while i < len(s):
        c = s[i]
        if c in '"\'':
            i = skip_string(s, i)
            continue
        if c in '([{':
            depth += 1
        elif c in ')]}':
            if depth == 0:
                return i
            depth -= 1
        elif c in ',;' and depth == 0:
            return i
        i += 1
    return i


def strbuf_value(var, fn, src, depth):
    """The concatenation of everything appended to cp_strbuf var in fn, in
    source order, as a template (a list of parts: ('e', constant C
    expression) or ('f', format, [arguments])); None when a piece cannot
    be resolved."""
    parts = []
    for m in re.finditer(r'\bcp_strbuf_(adds|addf|add)\s*\(\s*&\s*' + re.escape(var) + r'\s*,', fn.body):
        start = fn.body.find('(', m.start())
        args = split_top(fn.body[start + 1:match_paren(fn.body, start) - 1])[1:]
        if m.group(1) == 'adds':
            parts += first_constant(args[0], fn, src, depth)
        elif m.group(1) == 'addf':
            parts.append(('f', args[0], [first_constant(x, fn, src, depth) for x in args[1:]]))
        else:
            return None
    return parts or None


def first_constant(expr, fn, src, depth):
    """A template for expr: its first resolvable constant value, another
    strbuf's template, or the identifier __dyn__ for a runtime value (a
    column chosen from a fixed list, a number)."""
    m = re.match(r'^(\w+)\.buf$', expr)
    if m:
        v = strbuf_value(m.group(1), fn, src, depth + 1)
        return v if v is not None else [('e', '"__dyn__"')]
    if '"' not in expr and not re.match(r'^\w+$', expr) and '?' not in expr:
        return [('e', '"__dyn__"')]             # arithmetic: a number
    if re.match(r'^\w+$', expr) and not expr.isupper() and not assignments(expr, fn.body) \
            and not assignments(expr, file_scope(src, functions(src))):
        return [('e', '"__dyn__"')]
    for label, e in resolve(split_ternary(expr)[0], fn, src, depth + 1):
        if isinstance(e, list):
            return e
        if e is not None:
            if re.match(r'^\w+$', e) and not e.isupper():
                return [('e', '"__dyn__"')]     # a local buffer filled by snprintf
            return [('e', e)]
    return [('e', '"__dyn__"')]


def c_format(fmt, args):
    """printf(fmt, args) for the conversions SQL builders use: %s takes the
    argument's text, %d and %ld (numbers) become 1."""
    out, ai, i = [], 0, 0
    while i < len(fmt):
        c = fmt[i]
        if c != '%':
            out.append(c)
            i += 1
            continue
        if fmt.startswith('%.*s', i):    # a length and a pointer: a runtime piece
            out.append('__dyn__')
            ai += 2
            i += 4
            continue
        m = re.match(r'%([-0-9.]*)(l{0,2}|z|j)([sdiu%])', fmt[i:])
        if not m:
            raise ValueError("unsupported format in SQL builder: %r" % fmt[i:i + 8])
        conv = m.group(3)
        if conv == '%':
            out.append('%')
        elif conv == 's':
            out.append(args[ai] if ai < len(args) else '__dyn__')
            ai += 1
        else:
            out.append('1')
            ai += 1
        i += m.end()
    return ''.join(out)


# ---------------------------------------------------------------- the scope rule

class Schema:
    def __init__(self, golden):
        self.cols = {}
        for l in open(golden):
            m = re.match(r'^(\w+)\.(\w+) ', l)
            if m:
                self.cols.setdefault(m.group(1), set()).add(m.group(2))

    def tenant(self, t):
        return 'account_id' in self.cols.get(t, ()) or t == 'accounts'

    def known(self, t):
        return t in self.cols

    def scope_col(self, t):
        return 'id' if t == 'accounts' else 'account_id'


def node(n):
    """(type, fields) of a parse-tree node."""
    if isinstance(n, dict) and len(n) == 1:
        k = next(iter(n))
        if k[0].isupper():
            return k, n[k]
    return None, n


def colref(n):
    t, f = node(n)
    if t == 'TypeCast':
        return colref(f.get('arg'))
    if t != 'ColumnRef':
        return None
    names = []
    for x in f.get('fields', []):
        tt, ff = node(x)
        if tt == 'String':
            names.append(ff.get('sval'))
        else:
            names.append('*')
    return names


def is_param_or_const(n):
    t, f = node(n)
    if t == 'TypeCast':
        return is_param_or_const(f.get('arg'))
    if t in ('ParamRef', 'A_Const'):
        return True
    if t == 'A_ArrayExpr':
        return all(is_param_or_const(e) for e in f.get('elements', []))
    if t == 'FuncCall':   # e.g. NULLIF($1, '') or current_setting(...)
        return all(is_param_or_const(a) for a in f.get('args', []))
    if t == 'CoalesceExpr':
        return all(is_param_or_const(a) for a in f.get('args', []))
    return False


def conjuncts(n):
    t, f = node(n)
    if t == 'BoolExpr' and f.get('boolop') == 'AND_EXPR':
        out = []
        for a in f.get('args', []):
            out += conjuncts(a)
        return out
    return [n] if n else []


class Verdict:
    def __init__(self):
        self.tables = set()
        self.globals = set()
        self.unanchored = []
        self.locks = False
        self.other = []         # DDL and the like
        self.params = set()     # the parameters account scope columns equal
        self.cross = []         # anchored through another account (msp_account_id)

    @property
    def kind(self):
        if self.other or self.locks or self.globals or self.unanchored or self.cross or len(self.params) > 1:
            return 'unscoped'
        return 'scoped' if self.tables else 'no-table'

    def why(self):
        w = []
        if self.unanchored:
            w.append('not anchored: ' + ', '.join(sorted(set(self.unanchored))))
        if self.globals:
            w.append('global tables: ' + ', '.join(sorted(self.globals)))
        if self.locks:
            w.append('advisory lock')
        if self.cross:
            w.append('cross-account: ' + ', '.join(sorted(set(self.cross))))
        if len(self.params) > 1:
            w.append('several account parameters: ' + ', '.join('$%d' % p for p in sorted(self.params)))
        if self.other:
            w.append(', '.join(sorted(set(self.other))))
        return '; '.join(w)


class Checker:
    def __init__(self, schema):
        self.schema = schema
        self.lateral = []

    def statement(self, tree):
        v = Verdict()
        for s in tree.get('stmts', []):
            self.stmt(s.get('stmt'), {}, v)
        return v

    # env: name -> anchored (bool) for relations visible from outer levels
    # and CTE names -> ('cte', scoped)
    def stmt(self, n, env, v):
        t, f = node(n)
        if t == 'SelectStmt':
            return self.select(f, env, v)
        if t in ('UpdateStmt', 'DeleteStmt', 'InsertStmt'):
            return self.modify(t, f, env, v)
        if t == 'TransactionStmt' or t == 'VariableSetStmt':
            return True
        if t is None:
            return True
        v.other.append(t)
        return False

    def with_clause(self, f, env, v):
        env = dict(env)
        w = f.get('withClause')
        if w:
            for c in w.get('ctes', []):
                tt, cf = node(c)
                before = len(v.unanchored) + len(v.globals) + len(v.other)
                ok = self.stmt(cf.get('ctequery'), env, v)
                after = len(v.unanchored) + len(v.globals) + len(v.other)
                env[cf['ctename']] = ('cte', ok and before == after)
        return env

    def from_items(self, items, env, v, rels, quals):
        """Flattens FROM items into rels: alias -> (kind, table/ok)."""
        for it in items or []:
            t, f = node(it)
            if t == 'RangeVar':
                name = f['relname']
                alias = (f.get('alias') or {}).get('aliasname', name)
                if name in env and isinstance(env[name], tuple) and env[name][0] == 'cte' and not f.get('schemaname'):
                    rels[alias] = ('cte', env[name][1])
                elif self.schema.tenant(name):
                    v.tables.add(name)
                    rels[alias] = ('tenant', name)
                else:
                    v.tables.add(name)
                    if name.startswith('pg_') or not self.schema.known(name):
                        v.other.append('table ' + name)
                    else:
                        v.globals.add(name)
                    rels[alias] = ('global', name)
            elif t == 'JoinExpr':
                self.from_items([f.get('larg'), f.get('rarg')], env, v, rels, quals)
                if f.get('quals'):
                    quals += conjuncts(f['quals'])
            elif t == 'RangeSubselect' and f.get('lateral'):
                # LATERAL sees this level's relations: checked after anchoring
                alias = (f.get('alias') or {}).get('aliasname', '?')
                rels[alias] = ('func', None)
                self.lateral.append(f.get('subquery'))
            elif t == 'RangeSubselect':
                alias = (f.get('alias') or {}).get('aliasname', '?')
                before = len(v.unanchored) + len(v.globals) + len(v.other)
                ok = self.stmt(f.get('subquery'), env, v)
                rels[alias] = ('cte', ok and before == len(v.unanchored) + len(v.globals) + len(v.other))
            elif t == 'RangeFunction':
                alias = (f.get('alias') or {}).get('aliasname', '?')
                self.walk_exprs(f, env, v, {})
                rels[alias] = ('func', None)
            elif t is not None:
                v.other.append(t)

    def anchor(self, rels, quals, env, v):
        """The set of anchored aliases (fixpoint over the equality terms)."""
        anchored = {a for a, (k, x) in rels.items() if k in ('cte',) and x}
        anchored |= {a for a, (k, x) in rels.items() if k == 'func'}
        outer = {a for a, x in env.items() if x is True}

        def scope_of(names):
            """alias whose scope column names refers to, or None."""
            if len(names) == 2:
                a, c = names
                if a in rels:
                    k, x = rels[a]
                    if k == 'tenant' and c == self.schema.scope_col(x):
                        return a
                    if k == 'cte' and c in ('account_id', 'id'):
                        return a
                    return None
                if a in outer and c in ('account_id', 'id'):
                    return ('outer', a)
                return None
            if len(names) == 1:
                c = names[0]
                cand = [a for a, (k, x) in rels.items() if k == 'tenant' and self.schema.scope_col(x) == c]
                if len(rels) == 1 and cand:
                    return cand[0]
                if len(cand) == 1 and c == 'account_id':
                    return cand[0]
            return None

        def param_of(n):
            t, f = node(n)
            if t == 'TypeCast':
                return param_of(f.get('arg'))
            return f.get('number') if t == 'ParamRef' else None

        def anchored_value(n):
            if is_param_or_const(n):
                p = param_of(n)
                if p:
                    v.params.add(p)
                return True
            names = colref(n)
            if names:
                s = scope_of(names)
                if isinstance(s, tuple):
                    return True
                if s in anchored:
                    return True
                # a column of an anchored relation that is not its scope
                # column does not anchor (group_id = g.id is not enough)
                if len(names) == 2 and names[0] in anchored and names[1] == 'account_id':
                    return True
                if len(names) == 2 and names[0] in anchored and names[1] == 'msp_account_id':
                    v.cross.append('%s.msp_account_id' % names[0])
                    return True
                return False
            t, f = node(n)
            if t == 'SubLink':
                before = len(v.unanchored) + len(v.globals) + len(v.other)
                ok = self.stmt(f.get('subselect'), {**env, **{a: True for a in anchored}}, v)
                return ok and before == len(v.unanchored) + len(v.globals) + len(v.other)
            return False

        changed = True
        while changed:
            changed = False
            for q in quals:
                t, f = node(q)
                if t == 'A_Expr' and f.get('kind') in ('AEXPR_OP', 'AEXPR_OP_ANY', 'AEXPR_IN'):
                    op = [node(x)[1].get('sval') for x in f.get('name', [])]
                    if op != ['=']:
                        continue
                    l, r = f.get('lexpr'), f.get('rexpr')
                    sides = [(l, r), (r, l)] if f.get('kind') == 'AEXPR_OP' else [(l, r)]
                    for a, b in sides:
                        names = colref(a)
                        if not names:
                            continue
                        s = scope_of(names)
                        if s is None or isinstance(s, tuple) or s in anchored:
                            continue
                        if f.get('kind') == 'AEXPR_IN':
                            ok = all(anchored_value(x) for x in (b if isinstance(b, list) else [b]))
                        else:
                            ok = anchored_value(b)
                        if ok:
                            anchored.add(s)
                            changed = True
                elif t == 'SubLink' and f.get('subLinkType') == 'ANY_SUBLINK':
                    names = colref(f.get('testexpr'))
                    if names:
                        s = scope_of(names)
                        if s and not isinstance(s, tuple) and s not in anchored and anchored_value(q):
                            anchored.add(s)
                            changed = True
        return anchored

    def level(self, rels, quals, env, v, exprs, lateral):
        anchored = self.anchor(rels, quals, env, v)
        inner_env = dict(env)
        for a in rels:
            inner_env[a] = a in anchored
        for q in lateral:
            self.stmt(q, inner_env, v)
        for a, (k, x) in rels.items():
            if k == 'tenant' and a not in anchored:
                v.unanchored.append('%s %s' % (x, a) if a != x else x)
        for e in exprs:
            self.walk_exprs(e, inner_env, v, rels)
        return all(a in anchored for a, (k, x) in rels.items() if k == 'tenant')

    def walk_exprs(self, n, env, v, rels):
        """Sub-queries inside expressions, and advisory locks."""
        if isinstance(n, list):
            for x in n:
                self.walk_exprs(x, env, v, rels)
            return
        if not isinstance(n, dict):
            return
        t, f = node(n)
        if t == 'SubLink':
            self.stmt(f.get('subselect'), env, v)
            self.walk_exprs(f.get('testexpr'), env, v, rels)
            return
        if t == 'FuncCall':
            fname = [node(x)[1].get('sval') for x in f.get('funcname', [])]
            if fname and fname[-1].startswith('pg_advisory') or fname and fname[-1].startswith('pg_try_advisory'):
                v.locks = True
        for k, x in (f.items() if t else n.items()):
            if isinstance(x, (dict, list)):
                self.walk_exprs(x, env, v, rels)

    def select(self, f, env, v):
        before = (len(v.unanchored), len(v.globals), len(v.other))
        env = self.with_clause(f, env, v)
        if f.get('op') and f.get('op') != 'SETOP_NONE':
            a = self.select(node(f['larg'])[1], env, v)
            b = self.select(node(f['rarg'])[1], env, v)
            return a and b
        rels, quals = {}, []
        saved, self.lateral = self.lateral, []
        self.from_items(f.get('fromClause'), env, v, rels, quals)
        lateral, self.lateral = self.lateral, saved
        quals += conjuncts(f.get('whereClause'))
        exprs = [f.get(k) for k in ('targetList', 'whereClause', 'havingClause', 'valuesLists', 'sortClause',
                                    'groupClause', 'limitCount', 'limitOffset', 'distinctClause')]
        exprs += [q for q in quals]
        self.level(rels, quals, env, v, exprs, lateral)
        return before == (len(v.unanchored), len(v.globals), len(v.other))

    def modify(self, t, f, env, v):
        before = (len(v.unanchored), len(v.globals), len(v.other))
        env = self.with_clause(f, env, v)
        rv = f['relation']
        name = rv['relname']
        alias = (rv.get('alias') or {}).get('aliasname', name)
        if t == 'InsertStmt':
            v.tables.add(name)
            cols = [node(c)[1].get('name') for c in f.get('cols', [])]
            if not self.schema.tenant(name):
                if self.schema.known(name):
                    v.globals.add(name)
                else:
                    v.other.append('table ' + name)
            sel = f.get('selectStmt')
            st, sf = node(sel)
            if self.schema.tenant(name):
                col = self.schema.scope_col(name)
                if col not in cols:
                    v.unanchored.append(name + ' (INSERT without %s)' % col)
                else:
                    k = cols.index(col)
                    if st == 'SelectStmt' and sf.get('valuesLists'):
                        for row in sf['valuesLists']:
                            items = node(row)[1].get('items', [])
                            if k >= len(items) or not is_param_or_const(items[k]):
                                v.unanchored.append(name + ' (INSERT %s not a parameter)' % col)
                    elif st == 'SelectStmt':
                        ok = self.select(sf, env, v)
                        tl = sf.get('targetList', [])
                        val = node(tl[k])[1].get('val') if k < len(tl) else None
                        if not ok or not (is_param_or_const(val) or colref(val)):
                            v.unanchored.append(name + ' (INSERT ... SELECT %s not from a scoped row)' % col)
                        sel = None
            if sel is not None and st == 'SelectStmt' and not sf.get('valuesLists'):
                self.select(sf, env, v)
            elif sel is not None and st == 'SelectStmt':
                self.walk_exprs(sf.get('valuesLists'), env, v, {})
            oc = f.get('onConflictClause')
            if oc:
                self.walk_exprs(oc, env, v, {alias: ('tenant', name)})
            self.walk_exprs(f.get('returningList'), env, v, {})
            return before == (len(v.unanchored), len(v.globals), len(v.other))
        rels, quals = {}, []
        saved, self.lateral = self.lateral, []
        self.from_items([{'RangeVar': rv}], env, v, rels, quals)
        self.from_items(f.get('fromClause') or f.get('usingClause'), env, v, rels, quals)
        lateral, self.lateral = self.lateral, saved
        quals += conjuncts(f.get('whereClause'))
        exprs = [f.get('targetList'), f.get('whereClause'), f.get('returningList')] + quals
        self.level(rels, quals, env, v, exprs, lateral)
        return before == (len(v.unanchored), len(v.globals), len(v.other))


# ---------------------------------------------------------------- exceptions

def load_exceptions(path):
    """name pattern -> reason, from 'PATTERN<TAB or 2+ spaces>REASON' lines."""
    out = {}
    for i, l in enumerate(open(path), 1):
        l = l.rstrip('\n')
        if not l.strip() or l.lstrip().startswith('#'):
            continue
        m = re.match(r'^(\S+)\s+(\S.*)$', l)
        if not m:
            raise ValueError("%s:%d: want 'NAME REASON'" % (path, i))
        if m.group(1) in out:
            raise ValueError("%s:%d: %s listed twice" % (path, i, m.group(1)))
        out[m.group(1)] = m.group(2)
    return out


def exception_for(name, exc):
    for pat, reason in exc.items():
        if pat == name or fnmatch.fnmatchcase(name, pat):
            return pat, reason
    return None, None


# ---------------------------------------------------------------- the whole list

def run_dump(dump, *args, stdin=None):
    # libpg_query keeps per-thread parser state until exit: in a sanitizer
    # build (tests/run --sanitize) that is not a leak of ours
    env = dict(os.environ)
    env['ASAN_OPTIONS'] = (env.get('ASAN_OPTIONS', '') + ':detect_leaks=0').lstrip(':')
    out = subprocess.run([dump] + list(args), input=stdin, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError("sql-scope-dump %s failed: %s" % (' '.join(args), out.stderr))
    return json.loads(out.stdout)


def collect(dump, source_root, build_root, extra_files=()):
    """Every statement: list of dicts {name, source, sql}, plus problems."""
    stmts = []
    for s in run_dump(dump, 'table'):
        stmts.append({'name': s['name'], 'source': s['source'], 'sql': s['sql']})
    pp = Preprocessor(build_root)
    sites, wrappers = scan_sources(source_root, pp, extra_files=extra_files)
    problems = []
    for site in sites:
        if site.problem or not site.sqls:
            problems.append("%s:%d %s(): %s" % (site.file, site.line, site.func, site.problem or "no SQL found"))
            continue
        stem = os.path.basename(site.file)[:-2]
        for label, sql in site.sqls:
            if label == 'literal':
                label = literal_label(sql)
            name = '%s:%s:%s' % (stem, site.func, label)
            stmts.append({'name': name, 'source': '%s:%d' % (site.file, site.line), 'sql': sql})
    # one entry per (name, sql); the same name with different texts gets #n
    seen, out = {}, []
    for s in stmts:
        key = (s['name'], s['sql'])
        if key in seen:
            seen[key]['sources'].append(s['source'])
            continue
        same = [x for x in out if x['name'] == s['name'] or x['name'].startswith(s['name'] + '#')]
        if same:
            s = dict(s, name='%s#%d' % (s['name'], len(same) + 1))
        s['sources'] = [s['source']]
        seen[key] = s
        out.append(s)
    return out, sites, wrappers, problems


def literal_label(sql):
    """A name for SQL written in place: its verb, first table and a short
    hash of the text (so the name changes when the statement does)."""
    import hashlib
    words = re.findall(r'[A-Za-z_][\w.]*', sql)
    verb = words[0].lower() if words else 'sql'
    m = re.search(r'\b(?:FROM|INTO|UPDATE|JOIN)\s+([a-z_][\w]*)', sql, re.I)
    table = m.group(1) if m else ''
    h = hashlib.sha1(sql.encode()).hexdigest()[:6]
    return '%s-%s@%s' % (verb, table, h) if table else '%s@%s' % (verb, h)


def classify(dump, schema, stmts):
    trees = run_dump(dump, 'parse', stdin=json.dumps([s['sql'] for s in stmts]))
    ck = Checker(schema)
    for s, t in zip(stmts, trees):
        if 'error' in t:
            s['kind'], s['why'] = 'unparsed', t['error']
            continue
        if s['name'].startswith('migration:'):
            s['kind'], s['why'] = 'unscoped', 'DDL'
            continue
        v = ck.statement(t['tree'])
        s['kind'], s['why'] = v.kind, v.why()
    return stmts


def judge(stmts, exc):
    """(unlisted, stale): unscoped statements without an exception, and
    exception patterns that name no unscoped statement."""
    unlisted, used = [], set()
    for s in stmts:
        pat, reason = exception_for(s['name'], exc)
        if s['kind'] in ('unscoped', 'unparsed'):
            if pat:
                used.add(pat)
                s['exception'] = reason
            else:
                unlisted.append(s)
    stale = [p for p in exc if p not in used]
    return unlisted, stale


def main(argv):
    build = argv[1] if len(argv) > 1 else 'build'
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    dump = os.path.join(build, 'tests/sql/sql-scope-dump')
    stmts, sites, wrappers, problems = collect(dump, root, build)
    classify(dump, Schema(os.path.join(root, 'sql/expected/schema.txt')), stmts)
    exc = load_exceptions(os.path.join(root, 'sql/scope-exceptions.txt'))
    for s in stmts:
        pat, reason = exception_for(s['name'], exc)
        tag = s['kind'] if s['kind'] != 'unscoped' else ('exception(%s)' % reason if pat else 'UNSCOPED')
        print('%-60s %-10s %s' % (s['name'], tag[:200], s['why'] if s['kind'] == 'unscoped' and not pat else ''))
    for p in problems:
        print('PROBLEM', p)
    for w in wrappers:
        print('wrapper', w)


if __name__ == '__main__':
    main(sys.argv)
