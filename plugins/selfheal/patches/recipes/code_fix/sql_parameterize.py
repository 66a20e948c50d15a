"""sql_parameterize: string-built SQL passed to a DB-API ``execute`` becomes a parameterized query.

Recognised shapes (the query inline in ``execute(...)`` or in a local
variable assigned once in the same function and used only there)::

    f"... WHERE c = '{x}'"            "..." "... = '%s'" % x         "... = '" + x + "'"
    "... WHERE c = '{}'".format(x)    "... = {0}".format(x)          (implicit concatenation of any of them)

How an interpolation is rewritten is decided by where it sits in the SQL
text (a small SQL lexer over the template, not a regex on the source):

* inside a quoted SQL string literal (``'{x}'``, ``'%{x}%'``): the whole
  literal becomes one placeholder and its content the parameter
  (``x`` or ``f"%{x}%"``);
* unquoted in a value position (after ``=``, ``<``, ``LIKE``, ``LIMIT``,
  inside ``VALUES (...)``): a placeholder, the expression the parameter;
* a constant (an UPPER_CASE name or a module-level string/number, such as a
  column list): kept as it is (it is SQL syntax, not input);
* anything else (a non-constant table or column name, ``IN ({ids})``, a SQL
  fragment): not fixable by this recipe; the plan needs a human.

The placeholder style follows the driver (``?`` for sqlite3, ``%s`` for
psycopg/PyMySQL), taken from the module's existing parameterized queries or
its imports. The rewrite is done with libcst on the concrete syntax tree, so
everything outside the rewritten expressions keeps its exact formatting.
Which code a web finding points at is found by name: the string-built
queries whose interpolated values mention the finding's parameter.
"""

from __future__ import annotations

import ast
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import libcst as cst
from libcst.metadata import MetadataWrapper, PositionProvider

from selfheal.findings.model import Finding
from selfheal.patches.recipes.code_fix import NotFixable, SourceFix, SourceRecipe
from selfheal.patches.recipes.pysource import app_sources, code, parse

SQLI_CWES = frozenset({89, 564})
EXECUTE_METHODS = frozenset({"execute"})
_CONST_NAME = re.compile(r"^_?[A-Z][A-Z0-9_]*$")
_QMARK_DRIVERS = ("sqlite3", "aiosqlite", "pysqlite2", "duckdb")
_FORMAT_DRIVERS = ("psycopg", "psycopg2", "pymysql", "MySQLdb", "mysql.connector", "pg8000", "aiomysql")
_VALUE_BEFORE = re.compile(
    r"(?:[=<>]|\b(?:LIKE|GLOB|ILIKE|REGEXP|LIMIT|OFFSET|IS|THEN|ELSE))\s*$", re.IGNORECASE
)
_BETWEEN_AND = re.compile(r"\bBETWEEN\s+\S+\s+AND\s*$", re.IGNORECASE)
_IN_VALUES = re.compile(r"\bVALUES\s*\((?:[^()']|'[^']*')*$", re.IGNORECASE)
_PERCENT_SPEC = re.compile(
    r"%(?:\((?P<key>[^)]*)\))?(?P<flags>[-#0 +]*)(?P<width>\*|\d+)?(?:\.(?P<prec>\*|\d+))?"
    r"[hlL]?(?P<type>[diouxXeEfFgGcrsa%])"
)


# ------------------------------------------------------------------ the template model
@dataclass
class Text:
    text: str


@dataclass
class Expr:
    """One interpolated Python expression and how it was formatted."""

    src: str
    conversion: str | None = None
    spec: str | None = None
    kept: str | None = None  # source to keep in an f-string, braces included (original f-string parts)
    constant: bool = False
    names: frozenset[str] = frozenset()

    def as_fstring_field(self) -> str:
        if self.kept is not None:
            return self.kept
        return (
            "{"
            + self.src
            + (f"!{self.conversion}" if self.conversion else "")
            + (f":{self.spec}" if self.spec else "")
            + "}"
        )


Part = Text | Expr


@dataclass
class Leaf:
    """One string literal of the template (its quote style is kept when it is regenerated)."""

    node: cst.BaseExpression | None  # None: a '+' chain, regenerated as one literal
    quote: str
    parts: list[Part] = field(default_factory=list)


@dataclass
class Template:
    root: cst.BaseExpression  # the expression that is replaced
    tree: cst.BaseExpression | None  # the literal (tree) whose leaves are regenerated; None for '+' chains
    leaves: list[Leaf]


@dataclass
class Site:
    file: str
    function: str
    line: int
    call: cst.Call
    template: Template
    existing: cst.BaseExpression | None  # params the call already passes
    assign_line: int | None = None


# ------------------------------------------------------------------ expression helpers
def _names(node: cst.CSTNode) -> frozenset[str]:
    """Identifiers and string keys in an expression (``request.args["q"]`` -> {request, q})."""
    out: set[str] = set()

    class V(cst.CSTVisitor):
        def visit_Name(self, n: cst.Name) -> None:
            out.add(n.value)

        def visit_Attribute(self, n: cst.Attribute) -> bool:
            n.value.visit(self)
            return False

        def visit_SimpleString(self, n: cst.SimpleString) -> None:
            v = n.evaluated_value
            if isinstance(v, str) and len(v) <= 64:
                out.add(v)

    node.visit(V())
    return frozenset(out)


def _is_constant(node: cst.BaseExpression, module_consts: set[str]) -> bool:
    if isinstance(node, cst.Integer | cst.Float | cst.SimpleString):
        return True
    if isinstance(node, cst.Name):
        return bool(_CONST_NAME.match(node.value)) or node.value in module_consts
    if isinstance(node, cst.Attribute):
        return bool(_CONST_NAME.match(node.attr.value))
    return False


def _expr(
    node: cst.BaseExpression,
    consts: set[str],
    conversion: str | None = None,
    spec: str | None = None,
    kept: str | None = None,
) -> Expr:
    # str(x) adds nothing once x is bound as a parameter.
    if (
        isinstance(node, cst.Call)
        and isinstance(node.func, cst.Name)
        and node.func.value == "str"
        and len(node.args) == 1
        and not node.args[0].keyword
        and not node.args[0].star
    ):
        node = node.args[0].value
    return Expr(
        src=code(node),
        conversion=conversion,
        spec=spec,
        kept=kept,
        constant=_is_constant(node, consts),
        names=_names(node),
    )


def _leaves(node: cst.BaseExpression) -> list[cst.BaseExpression]:
    if isinstance(node, cst.ConcatenatedString):
        return [*_leaves(node.left), *_leaves(node.right)]
    return [node]


def _quote_prefix(leaf: cst.BaseExpression) -> tuple[str, str]:
    if isinstance(leaf, cst.SimpleString):
        return leaf.prefix.lower(), leaf.quote
    assert isinstance(leaf, cst.FormattedString)
    return leaf.start[: len(leaf.start) - len(leaf.end)].lower(), leaf.end


def _fstring_text(raw: str, prefix: str, quote: str) -> str:
    text = ast.literal_eval(prefix.replace("f", "") + quote + raw + quote)
    return text.replace("{{", "{").replace("}}", "}")


def _literal_parts(leaf: cst.BaseExpression, consts: set[str]) -> list[Part]:
    """The parts of one string literal; NotFixable for bytes."""
    prefix, quote = _quote_prefix(leaf)
    if "b" in prefix:
        raise NotFixable("the query is a bytes literal")
    if isinstance(leaf, cst.SimpleString):
        return [Text(str(leaf.evaluated_value))]
    assert isinstance(leaf, cst.FormattedString)
    parts: list[Part] = []
    for p in leaf.parts:
        if isinstance(p, cst.FormattedStringText):
            parts.append(Text(_fstring_text(p.value, prefix, quote)))
        else:
            assert isinstance(p, cst.FormattedStringExpression)
            if p.equal is not None:
                raise NotFixable(f"self-documenting f-string field {code(p)} in the query")
            spec = "".join(code(s) for s in p.format_spec) if p.format_spec else None
            parts.append(_expr(p.expression, consts, p.conversion, spec, kept=code(p)))
    return parts


def _is_literal(node: cst.BaseExpression) -> bool:
    return isinstance(node, cst.SimpleString | cst.FormattedString | cst.ConcatenatedString)


def _percent_parts(text: str, args: list[Expr] | dict[str, Expr], cursor: list[int]) -> list[Part]:
    parts: list[Part] = []
    pos = 0
    for m in _PERCENT_SPEC.finditer(text):
        parts.append(Text(text[pos : m.start()]))
        pos = m.end()
        if m.group("type") == "%":
            parts.append(Text("%"))
            continue
        if m.group("flags") or m.group("width") or m.group("prec") or m.group("type") not in "sdir":
            raise NotFixable(f"format {m.group(0)!r} in the query cannot be turned into a placeholder")
        key = m.group("key")
        if key is not None:
            if not isinstance(args, dict) or key not in args:
                raise NotFixable(f"%({key})s has no matching argument")
            e = args[key]
        else:
            if not isinstance(args, list) or cursor[0] >= len(args):
                raise NotFixable("more %s placeholders than arguments")
            e = args[cursor[0]]
            cursor[0] += 1
        parts.append(Expr(e.src, "r" if m.group("type") == "r" else None, None, None, e.constant, e.names))
    parts.append(Text(text[pos:]))
    return parts


def _format_parts(text: str, pos_args: list[Expr], kw_args: dict[str, Expr], cursor: list[int]) -> list[Part]:
    parts: list[Part] = []
    try:
        fields = list(string.Formatter().parse(text))
    except ValueError as e:
        raise NotFixable(f"the query's format string does not parse: {e}") from e
    for literal, name, spec, conversion in fields:
        if literal:
            parts.append(Text(literal))
        if name is None:
            continue
        if spec:
            raise NotFixable(f"format spec {{{name}:{spec}}} in the query")
        if name == "":
            if cursor[0] >= len(pos_args):
                raise NotFixable("more {} fields than arguments")
            e = pos_args[cursor[0]]
            cursor[0] += 1
        elif name.isdigit():
            if int(name) >= len(pos_args):
                raise NotFixable(f"field {{{name}}} has no argument")
            e = pos_args[int(name)]
        elif name.isidentifier() and name in kw_args:
            e = kw_args[name]
        else:
            raise NotFixable(f"field {{{name}}} uses attribute/index access or has no argument")
        parts.append(Expr(e.src, conversion, None, None, e.constant, e.names))
    return parts


def template_of(node: cst.BaseExpression, consts: set[str]) -> Template | None:
    """The string-building expression as a template; None when it is not string-built SQL."""
    if _is_literal(node):
        leaves = [Leaf(leaf, _quote_prefix(leaf)[1], _literal_parts(leaf, consts)) for leaf in _leaves(node)]
        if not any(isinstance(p, Expr) for leaf in leaves for p in leaf.parts):
            return None
        return Template(node, node, leaves)
    if (
        isinstance(node, cst.BinaryOperation)
        and isinstance(node.operator, cst.Modulo)
        and _is_literal(node.left)
    ):
        right = node.right
        args: list[Expr] | dict[str, Expr]
        if isinstance(right, cst.Tuple):
            if any(isinstance(e, cst.StarredElement) for e in right.elements):
                raise NotFixable("starred arguments to % formatting")
            args = [_expr(e.value, consts) for e in right.elements]
        elif isinstance(right, cst.Dict):
            args = {}
            for el in right.elements:
                if not isinstance(el, cst.DictElement) or not isinstance(el.key, cst.SimpleString):
                    raise NotFixable("% formatting with a non-literal mapping")
                args[str(el.key.evaluated_value)] = _expr(el.value, consts)
        else:
            args = [_expr(right, consts)]
        cursor = [0]
        leaves = []
        for leaf in _leaves(node.left):
            if not isinstance(leaf, cst.SimpleString):
                raise NotFixable("% formatting of an f-string")
            leaves.append(Leaf(leaf, leaf.quote, _percent_parts(str(leaf.evaluated_value), args, cursor)))
        if isinstance(args, list) and cursor[0] != len(args):
            raise NotFixable("fewer %s placeholders than arguments")
        return Template(node, node.left, leaves)
    if (
        isinstance(node, cst.Call)
        and isinstance(node.func, cst.Attribute)
        and node.func.attr.value == "format"
        and _is_literal(node.func.value)
    ):
        pos_args, kw_args = [], {}
        for a in node.args:
            if a.star:
                raise NotFixable("*args/**kwargs in .format() of the query")
            if a.keyword is not None:
                kw_args[a.keyword.value] = _expr(a.value, consts)
            else:
                pos_args.append(_expr(a.value, consts))
        cursor = [0]
        leaves = []
        for leaf in _leaves(node.func.value):
            if not isinstance(leaf, cst.SimpleString):
                raise NotFixable(".format() of an f-string")
            leaves.append(
                Leaf(leaf, leaf.quote, _format_parts(str(leaf.evaluated_value), pos_args, kw_args, cursor))
            )
        return Template(node, node.func.value, leaves)
    if isinstance(node, cst.BinaryOperation) and isinstance(node.operator, cst.Add):
        operands: list[cst.BaseExpression] = []

        def flatten(n: cst.BaseExpression) -> None:
            if isinstance(n, cst.BinaryOperation) and isinstance(n.operator, cst.Add) and not n.lpar:
                flatten(n.left)
                flatten(n.right)
            else:
                operands.append(n)

        flatten(node)
        if not any(_is_literal(o) for o in operands) or all(_is_literal(o) for o in operands):
            return None
        parts: list[Part] = []
        for o in operands:
            if _is_literal(o):
                for leaf in _leaves(o):
                    parts += _literal_parts(leaf, consts)
            else:
                parts.append(_expr(o, consts))
        return Template(node, None, [Leaf(None, '"', parts)])
    return None


# ------------------------------------------------------------------ the SQL-aware rewrite
@dataclass
class Rewrite:
    leaves: list[list[Part]]  # new parts per leaf
    params: list[tuple[str, str | int]]  # ("new", source) or ("existing", index), in placeholder order
    names: frozenset[str]  # identifiers the new parameters use


def _param_source(inner: list[tuple[int, Part]]) -> tuple[str, frozenset[str]]:
    """The Python expression for the value of one quoted SQL literal's content."""
    exprs = [p for _i, p in inner if isinstance(p, Expr)]
    names = frozenset().union(*(e.names for e in exprs))
    if (
        len(inner) == 1
        and isinstance(inner[0][1], Expr)
        and not inner[0][1].conversion
        and not inner[0][1].spec
    ):
        return inner[0][1].src, names
    body_src = "".join(e.src for e in exprs)
    quote = '"' if '"' not in body_src else "'"
    if quote in body_src or "\\" in body_src:
        raise NotFixable("a quoted value mixes text with an expression that cannot go into an f-string")
    out = []
    for _i, p in inner:
        if isinstance(p, Text):
            out.append(
                p.text.replace("\\", "\\\\")
                .replace(quote, "\\" + quote)
                .replace("{", "{{")
                .replace("}", "}}")
                .replace("\n", "\\n")
            )
        else:
            out.append(
                "{"
                + p.src
                + (f"!{p.conversion}" if p.conversion else "")
                + (f":{p.spec}" if p.spec else "")
                + "}"
            )
    return f"f{quote}{''.join(out)}{quote}", names


def rewrite(leaves: list[Leaf], style: str, existing_count: int | None) -> Rewrite | None:
    """Turn value interpolations into placeholders; None when nothing needs it (only constants)."""
    placeholder = "?" if style == "qmark" else "%s"
    # One stream of (leaf index, single character Text | Expr) so quotes may span leaves.
    stream: list[tuple[int, Part]] = []
    for li, leaf in enumerate(leaves):
        for p in leaf.parts:
            if isinstance(p, Text):
                stream.extend((li, Text(c)) for c in p.text)
            else:
                stream.append((li, p))
    out: list[list[Part]] = [[] for _ in leaves]
    emitted: list[str] = []  # SQL text so far (for the value-position test)
    params: list[tuple[str, str | int]] = []
    names: set[str] = set()
    existing_seen = 0
    changed = False

    def emit_text(li: int, s: str) -> None:
        emitted.append(s)
        if style == "format" and s != placeholder:
            s = s.replace("%", "%%")
        if out[li] and isinstance(out[li][-1], Text):
            out[li][-1] = Text(out[li][-1].text + s)  # type: ignore[union-attr]
        else:
            out[li].append(Text(s))

    def close_quote(start: int, q: str) -> int:
        """Index of the closing quote matching stream[start] (doubled quotes are escapes), or -1."""
        j = start + 1
        while j < len(stream):
            p = stream[j][1]
            if isinstance(p, Text) and p.text == q:
                nxt = stream[j + 1][1] if j + 1 < len(stream) else None
                if isinstance(nxt, Text) and nxt.text == q:
                    j += 2
                    continue
                return j
            j += 1
        return -1

    i = 0
    while i < len(stream):
        li, p = stream[i]
        if isinstance(p, Text) and p.text in ("'", '"'):
            q = p.text
            j = close_quote(i, q)
            inner = stream[i + 1 : j] if j >= 0 else stream[i + 1 :]
            dynamic = [x for _l, x in inner if isinstance(x, Expr) and not x.constant]
            if not dynamic:
                end = j if j >= 0 else len(stream) - 1
                for k in range(i, end + 1):
                    lk, pk = stream[k]
                    if isinstance(pk, Text):
                        emit_text(lk, pk.text)
                    else:
                        out[lk].append(pk)
                        emitted.append("x")
                i = end + 1
                continue
            if j < 0:
                raise NotFixable("an interpolated value opens a SQL quote that never closes")
            if q == '"':
                raise NotFixable(f"{dynamic[0].src} is interpolated inside a double-quoted SQL identifier")
            # Unescape doubled quotes inside the literal: '' -> ' in the parameter's value.
            merged: list[tuple[int, Part]] = []
            k = 0
            while k < len(inner):
                lk, pk = inner[k]
                if (
                    isinstance(pk, Text)
                    and pk.text == "'"
                    and k + 1 < len(inner)
                    and isinstance(inner[k + 1][1], Text)
                    and inner[k + 1][1].text == "'"
                ):  # type: ignore[union-attr]
                    k += 1
                if isinstance(pk, Text) and merged and isinstance(merged[-1][1], Text):
                    merged[-1] = (merged[-1][0], Text(merged[-1][1].text + pk.text))  # type: ignore[union-attr]
                else:
                    merged.append((lk, pk))
                k += 1
            src, used = _param_source(merged)
            emit_text(li, placeholder)
            params.append(("new", src))
            names.update(used)
            changed = True
            i = j + 1
            continue
        if isinstance(p, Text):
            if style == "qmark" and p.text == "?":
                params.append(("existing", existing_seen))
                existing_seen += 1
            emit_text(li, p.text)
            i += 1
            continue
        assert isinstance(p, Expr)
        if p.constant:
            out[li].append(p)
            emitted.append(" x ")
            i += 1
            continue
        before = "".join(emitted)[-200:]
        if (
            _VALUE_BEFORE.search(before)
            or _BETWEEN_AND.search(before)
            or (_IN_VALUES.search(before) and re.search(r"[(,]\s*$", before))
        ):
            if re.search(r"\bIN\s*\(\s*$", before, re.IGNORECASE):
                raise NotFixable(f"{p.src} is a list interpolated into IN (...)")
            emit_text(li, placeholder)
            if p.conversion or p.spec:
                src, used = _param_source([(li, p)])
            else:
                src, used = p.src, p.names
            params.append(("new", src))
            names.update(used)
            changed = True
            i += 1
            continue
        if re.search(r"\bIN\s*\(\s*$", before, re.IGNORECASE):
            raise NotFixable(
                f"{p.src} is a list interpolated into IN (...); it needs one placeholder per item"
            )
        raise NotFixable(
            f"{p.src} is interpolated as SQL syntax (a name or fragment), not as a value: "
            "it cannot be a parameter; allow-list it by hand"
        )
    if not changed:
        return None
    if existing_count is None and existing_seen and style == "qmark":
        raise NotFixable("the query already contains ? placeholders but passes no parameters")
    if existing_count is not None and existing_seen != existing_count:
        raise NotFixable(
            f"the query has {existing_seen} existing placeholders for {existing_count} parameters"
        )
    return Rewrite(out, params, frozenset(names))


def _escape(text: str, quote: str, fstring: bool) -> str:
    text = text.replace("\\", "\\\\")
    if len(quote) == 1:
        text = text.replace("\n", "\\n").replace("\r", "\\r")
    text = text.replace(quote[0], "\\" + quote[0])
    if fstring:
        text = text.replace("{", "{{").replace("}", "}}")
    return text


def render_leaf(parts: list[Part], quote: str) -> str:
    fstring = any(isinstance(p, Expr) for p in parts)
    body = "".join(
        _escape(p.text, quote, fstring) if isinstance(p, Text) else p.as_fstring_field() for p in parts
    )
    return ("f" if fstring else "") + quote + body + quote


# ------------------------------------------------------------------ finding the call sites
class _Scope:
    def __init__(self, name: str) -> None:
        self.name = name
        self.assigns: dict[str, list[tuple[cst.Assign, int]]] = {}
        self.bindings: dict[str, list[int]] = {}
        self.loads: dict[str, int] = {}
        self.calls: list[tuple[cst.Call, int, int]] = []


class _Collector(cst.CSTVisitor):
    METADATA_DEPENDENCIES = (PositionProvider,)

    def __init__(self) -> None:
        self.scopes: list[_Scope] = [_Scope("<module>")]
        self.done: list[_Scope] = []
        self.module_consts: set[str] = set()
        self.imports: set[str] = set()
        self._depth = 0

    def _line(self, node: cst.CSTNode) -> int:
        return self.get_metadata(PositionProvider, node).start.line

    def _bind(self, target: cst.BaseExpression, line: int) -> None:
        for n in _target_names(target):
            self.scopes[-1].bindings.setdefault(n, []).append(line)

    def visit_FunctionDef(self, node: cst.FunctionDef) -> None:
        self.scopes.append(_Scope(node.name.value))

    def leave_FunctionDef(self, original_node: cst.FunctionDef) -> None:
        self.done.append(self.scopes.pop())

    def leave_Module(self, original_node: cst.Module) -> None:
        self.done.append(self.scopes[0])

    def visit_Import(self, node: cst.Import) -> None:
        for a in node.names:
            self.imports.add(code(a.name))

    def visit_ImportFrom(self, node: cst.ImportFrom) -> None:
        if node.module is not None:
            self.imports.add(code(node.module))

    def visit_Assign(self, node: cst.Assign) -> None:
        line = self._line(node)
        for t in node.targets:
            self._bind(t.target, line)
            if isinstance(t.target, cst.Name):
                self.scopes[-1].assigns.setdefault(t.target.value, []).append((node, line))
                if len(self.scopes) == 1 and isinstance(
                    node.value, cst.SimpleString | cst.Integer | cst.ConcatenatedString | cst.Float
                ):
                    self.module_consts.add(t.target.value)

    def visit_AugAssign(self, node: cst.AugAssign) -> None:
        self._bind(node.target, self._line(node))

    def visit_AnnAssign(self, node: cst.AnnAssign) -> None:
        self._bind(node.target, self._line(node))

    def visit_For(self, node: cst.For) -> None:
        self._bind(node.target, self._line(node))

    def visit_AsName(self, node: cst.AsName) -> None:
        self._bind(node.name, self._line(node))  # type: ignore[arg-type]

    def visit_NamedExpr(self, node: cst.NamedExpr) -> None:
        self._bind(node.target, self._line(node))

    def visit_Name(self, node: cst.Name) -> None:
        self.scopes[-1].loads[node.value] = self.scopes[-1].loads.get(node.value, 0) + 1

    def visit_Call(self, node: cst.Call) -> None:
        f = node.func
        if (
            isinstance(f, cst.Attribute)
            and f.attr.value in EXECUTE_METHODS
            and node.args
            and node.args[0].keyword is None
            and not node.args[0].star
        ):
            pos = self.get_metadata(PositionProvider, node)
            self.scopes[-1].calls.append((node, pos.start.line, pos.end.line))


def _target_names(target: cst.BaseExpression) -> list[str]:
    if isinstance(target, cst.Name):
        return [target.value]
    if isinstance(target, cst.Tuple | cst.List):
        return [n for e in target.elements for n in _target_names(e.value)]
    return []


def _style(c: _Collector, sites_text: list[str]) -> str | None:
    """The module's placeholder style: from its parameterized queries, else from its driver import."""
    q = sum(t.count("?") for t in sites_text)
    s = sum(t.count("%s") + t.count("%(") for t in sites_text)
    if q and not s:
        return "qmark"
    if s and not q:
        return "format"
    roots = {i.split(".")[0] for i in c.imports} | c.imports
    if any(d in roots for d in _QMARK_DRIVERS):
        return "qmark"
    if any(d in roots for d in _FORMAT_DRIVERS):
        return "format"
    return None


def _may_have_built_sql(text: str) -> bool:
    """Cheap pre-filter with the C parser: an ``execute`` whose query is not a plain string constant.

    libcst is pure Python and ~50x slower than ``ast``; most modules never need it.
    """
    if "execute" not in text:
        return False
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return True  # let libcst report it
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in EXECUTE_METHODS
            and node.args
            and not (isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str))
        ):
            return True
    return False


@dataclass
class FileResult:
    rel: str
    new_text: str | None
    sites: list[str]
    problems: list[str]


def fix_source(rel: str, text: str, targets: set[str] | None, lines: set[int] | None = None) -> FileResult:
    """Parameterize every string-built ``execute`` query in one file that matches the targets.

    ``targets``: identifiers the interpolated values must mention (a web
    finding's parameter); ``lines``: a code finding's lines (any line of the
    statement). None for both: every string-built query in the file.
    """
    if not _may_have_built_sql(text):
        return FileResult(rel, None, [], [])
    module = parse(text)
    if module is None:
        return FileResult(rel, None, [], [f"{rel}: does not parse as Python"])
    wrapper = MetadataWrapper(module, unsafe_skip_copy=True)  # freshly parsed: nobody else holds it
    c = _Collector()
    wrapper.visit(c)
    parameterized: list[str] = []
    for scope in c.done:
        for call, _l, _e in scope.calls:
            if len(call.args) >= 2 and _is_literal(call.args[0].value):
                for leaf in _leaves(call.args[0].value):
                    try:
                        parameterized.append(
                            "".join(p.text for p in _literal_parts(leaf, set()) if isinstance(p, Text))
                        )
                    except NotFixable:
                        continue
    style = _style(c, parameterized)
    replacements: dict[int, cst.BaseExpression] = {}
    unwrap: set[int] = set()
    call_params: dict[int, tuple[cst.BaseExpression, bool]] = {}
    sites: list[str] = []
    problems: list[str] = []
    for scope in c.done:
        for call, start, end in scope.calls:
            query = call.args[0].value
            assign_line = None
            where = f"{rel}:{start} {scope.name}()"
            if isinstance(query, cst.Name):
                assigns = scope.assigns.get(query.value, [])
                binds = scope.bindings.get(query.value, [])
                if len(assigns) != 1 or len(binds) != 1:
                    continue
                node, assign_line = assigns[0]
                if assign_line >= start or not isinstance(node.value, cst.BaseExpression):
                    continue
                expr = node.value
            else:
                expr = query
            try:
                tpl = template_of(expr, c.module_consts)
            except NotFixable as e:
                problems.append(f"{where}: {e}")
                continue
            if tpl is None:
                continue
            if lines is not None and not any((assign_line or start) <= ln <= end for ln in lines):
                continue
            existing = call.args[1].value if len(call.args) >= 2 else None
            existing_count = None
            try:
                if existing is not None:
                    if style != "qmark" or not isinstance(existing, cst.Tuple | cst.List):
                        raise NotFixable("the call already passes parameters that are not a literal tuple")
                    existing_count = len(existing.elements)
                if style is None:
                    raise NotFixable(
                        "cannot tell the database driver's placeholder style (no sqlite3/psycopg/"
                        "PyMySQL import and no parameterized query in the module)"
                    )
                rw = rewrite(tpl.leaves, style, existing_count)
            except NotFixable as e:
                if targets is None or _mentions(tpl, targets):
                    problems.append(f"{where}: {e}")
                continue
            if rw is None:
                continue
            if targets is not None and not (rw.names & targets):
                continue
            if isinstance(query, cst.Name):
                if scope.loads.get(query.value, 0) != 2:  # the assignment target and the execute argument
                    problems.append(f"{where}: {query.value} is used elsewhere too; not rewritten")
                    continue
                rebound = [n for n in rw.names for b in scope.bindings.get(n, []) if assign_line < b < start]
                if rebound:
                    problems.append(f"{where}: {rebound[0]} changes between the query and the call")
                    continue
            if tpl.tree is None:  # a '+' chain becomes one literal
                replacements[id(tpl.root)] = cst.parse_expression(render_leaf(rw.leaves[0], '"'))
            else:
                for leaf, parts in zip(tpl.leaves, rw.leaves, strict=True):
                    assert leaf.node is not None
                    replacements[id(leaf.node)] = cst.parse_expression(render_leaf(parts, leaf.quote))
                if tpl.tree is not tpl.root:  # % or .format(): the literal alone replaces the expression
                    unwrap.add(id(tpl.root))
            existing_elems = list(existing.elements) if isinstance(existing, cst.Tuple | cst.List) else []
            srcs = [s if kind == "new" else code(existing_elems[int(s)].value) for kind, s in rw.params]
            params = cst.parse_expression(f"({srcs[0]},)" if len(srcs) == 1 else f"({', '.join(srcs)})")
            call_params[id(call)] = (params, existing is not None)
            what = ", ".join(s for k, s in rw.params if k == "new")
            sites.append(
                f"{rel}:{assign_line or start} {scope.name}(): {len(srcs)} placeholder(s) "
                f"({style}), parameters: {what}"
            )
    if not call_params:
        return FileResult(rel, None, sites, problems)

    class Apply(cst.CSTTransformer):
        """One pass, matching ORIGINAL nodes by identity (libcst rebuilds parents, so ids change after)."""

        def on_leave(self, original_node: cst.CSTNode, updated_node: cst.CSTNode) -> cst.CSTNode:  # type: ignore[override]
            key = id(original_node)
            if key in replacements:
                return replacements[key]
            if key in unwrap:
                if isinstance(updated_node, cst.BinaryOperation):
                    inner = updated_node.left
                else:
                    assert isinstance(updated_node, cst.Call) and isinstance(updated_node.func, cst.Attribute)
                    inner = updated_node.func.value
                if updated_node.lpar and not inner.lpar:
                    inner = inner.with_changes(lpar=updated_node.lpar, rpar=updated_node.rpar)
                return inner
            if key in call_params and isinstance(updated_node, cst.Call):
                return _add_params(updated_node, *call_params[key])
            return updated_node

    new_module = wrapper.module.visit(Apply())
    return FileResult(rel, new_module.code, sites, problems)


def _add_params(call: cst.Call, params: cst.BaseExpression, replace: bool) -> cst.Call:
    """``call`` with ``params`` as its second argument, laid out like the first (inline or one per line)."""
    args = list(call.args)
    if replace:
        args[1] = args[1].with_changes(value=params)
        return call.with_changes(args=args)
    first = args[0]
    after = first.whitespace_after_arg
    multiline = "\n" in code(call.with_changes(args=[first.with_changes(comma=cst.MaybeSentinel.DEFAULT)]))
    if multiline and isinstance(call.whitespace_before_args, cst.ParenthesizedWhitespace):
        # One argument per line: "query,\n<indent>params,\n)" keeps the call's own layout.
        args[0] = first.with_changes(
            comma=cst.Comma(whitespace_after=call.whitespace_before_args),
            whitespace_after_arg=cst.SimpleWhitespace(""),
        )
        args.insert(1, cst.Arg(value=params, comma=cst.Comma(), whitespace_after_arg=after))
    else:
        args[0] = first.with_changes(
            comma=cst.Comma(whitespace_after=cst.SimpleWhitespace(" ")),
            whitespace_after_arg=cst.SimpleWhitespace(""),
        )
        args.insert(1, cst.Arg(value=params, comma=first.comma, whitespace_after_arg=after))
    return call.with_changes(args=args)


def _mentions(tpl: Template, targets: set[str]) -> bool:
    return any(isinstance(p, Expr) and p.names & targets for leaf in tpl.leaves for p in leaf.parts)


def _targets(finding: Finding) -> set[str] | None:
    param = finding.location.param if finding.location else None
    if not param:
        return None
    norm = re.sub(r"[^A-Za-z0-9_]", "_", param)
    return {param, param.lower(), norm, norm.lower()}


class SqlParameterize(SourceRecipe):
    name = "sql_parameterize"

    def applies(self, finding: Finding) -> bool:
        if finding.cwe not in SQLI_CWES or finding.location is None:
            return False
        if finding.kind == "web":
            return bool(finding.location.param)
        return (
            finding.kind == "code"
            and bool(finding.location.path)
            and (finding.location.path or "").endswith(".py")
        )

    def fix(self, findings: Sequence[Finding], workdir: Path) -> SourceFix:
        edits: dict[str, str] = {}
        sites: list[str] = []
        problems: list[str] = []
        for f in findings:
            loc = f.location
            assert loc is not None
            if f.kind == "code":
                rel = (loc.path or "").removeprefix("file://").lstrip("/")
                candidates = [(r, t) for r, t in app_sources(workdir) if rel.endswith(r) or r.endswith(rel)]
                targets, lines = None, {loc.line} if loc.line else None
            else:
                candidates = [(r, t) for r, t in app_sources(workdir) if "execute" in t]
                targets, lines = _targets(f), None
            for rel, text in candidates:
                res = fix_source(rel, edits.get(rel, text), targets, lines)
                problems += res.problems
                if res.new_text is not None:
                    edits[rel] = res.new_text
                    sites += res.sites
        if not edits:
            what = ", ".join(
                sorted(
                    {
                        f"parameter {f.location.param!r}"
                        if f.location and f.location.param
                        else f"{f.location.path}:{f.location.line}"
                        for f in findings
                        if f.location
                    }
                )
            )
            if problems:
                raise NotFixable(
                    f"string-built SQL for {what} found but not safely rewritable: " + "; ".join(problems[:3])
                )
            raise NotFixable(f"no string-built SQL passed to execute() uses {what}")
        return SourceFix(edits=edits, sites=sites, notes=problems, rescan_modules=("sql",))
