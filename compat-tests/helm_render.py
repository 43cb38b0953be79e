"""A test-only renderer for the Helm chart in helm/pgraft, for machines without `helm`.

It implements the part of Go's text/template and of Helm's functions that the chart uses, and
refuses anything else (an unknown function or construct raises `TemplateError`), so that a
template the renderer cannot read fails the test instead of rendering wrongly:

- actions `{{ pipeline }}` with `{{-` / `-}}` trimming and `{{/* comments */}}`;
- `if` / `else if` / `else`, `range` (over lists and maps, with `$i :=` or `$k, $v :=`),
  `with`, `define` and `include`, variables (`$x := ...`, `$x = ...`, `$`), pipelines with `|`,
  parenthesised pipelines, field chains (`.Values.a.b`, `$x.y`), string, number and bool literals;
- functions: and append default dict eq include indent int join len list ne nindent not or
  printf quote ternary toYaml trimSuffix trunc until.

`render_chart(chart_dir, values)` returns the rendered manifests as a list of parsed objects.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml


class TemplateError(Exception):
    pass


# ---------------------------------------------------------------------------------- lexing

ACTION = re.compile(r"\{\{(-?)\s*(/\*.*?\*/|.*?)\s*(-?)\}\}", re.S)


def lex(src: str) -> list[tuple[str, str]]:
    """[("text", s) | ("action", body)], with trim markers applied to the texts."""
    out: list[tuple[str, str]] = []
    pos = 0
    trim_next = False
    for m in ACTION.finditer(src):
        text = src[pos:m.start()]
        if trim_next:
            text = text.lstrip()
        if m.group(1):
            text = text.rstrip()
        out.append(("text", text))
        body = m.group(2)
        if not body.startswith("/*"):
            out.append(("action", body))
        trim_next = bool(m.group(3))
        pos = m.end()
    text = src[pos:]
    out.append(("text", text.lstrip() if trim_next else text))
    return out


TOKEN = re.compile(r'\s*(?:(?P<str>"(?:[^"\\]|\\.)*")|(?P<num>-?\d+)|(?P<op>:=|=|\||\(|\)|,)'
                   r'|(?P<word>[$.]?[A-Za-z_$][A-Za-z0-9_.$]*|\.))')


def tokens(expr: str) -> list[tuple[str, str]]:
    out = []
    pos = 0
    expr = expr.strip()
    while pos < len(expr):
        m = TOKEN.match(expr, pos)
        if not m or m.end() == pos:
            raise TemplateError(f"cannot read {expr[pos:]!r} in {expr!r}")
        kind = m.lastgroup
        out.append((kind, m.group(kind)))
        pos = m.end()
    return out


# ---------------------------------------------------------------------------------- parsing

def parse(items: list[tuple[str, str]]) -> list:
    """A tree: ("text", s) | ("out", expr) | ("if", [(cond, body)...], else) |
    ("range", vars, expr, body) | ("with", expr, body, else) | ("define", name, body)."""
    pos = 0

    def block(stop: set[str]) -> tuple[list, str]:
        nonlocal pos
        nodes: list = []
        while pos < len(items):
            kind, val = items[pos]
            pos += 1
            if kind == "text":
                if val:
                    nodes.append(("text", val))
                continue
            word = val.split(None, 1)[0] if val.split() else ""
            rest = val[len(word):].strip()
            if word in stop or (word == "else" and "else" in stop):
                return nodes, val
            if word == "if":
                branches = []
                cond = rest
                els = None
                while True:
                    body, end = block({"else", "end"})
                    branches.append((cond, body))
                    if end == "end":
                        break
                    if end.startswith("else if"):
                        cond = end[len("else if"):].strip()
                        continue
                    els, end = block({"end"})
                    break
                nodes.append(("if", branches, els))
            elif word == "range":
                m = re.match(r"(\$\w+)(?:\s*,\s*(\$\w+))?\s*:=\s*(.*)$", rest, re.S)
                names = [n for n in (m.group(1), m.group(2)) if n] if m else []
                expr = m.group(3) if m else rest
                body, end = block({"end", "else"})
                if end != "end":
                    raise TemplateError("range ... else is not supported")
                nodes.append(("range", names, expr, body))
            elif word == "with":
                body, end = block({"else", "end"})
                els = None
                if end != "end":
                    els, _ = block({"end"})
                nodes.append(("with", rest, body, els))
            elif word == "define":
                name = yaml.safe_load(rest)
                body, _ = block({"end"})
                nodes.append(("define", name, body))
            elif word in ("end", "else"):
                raise TemplateError(f"unexpected {{{{ {val} }}}}")
            elif word in ("template", "block", "break", "continue"):
                raise TemplateError(f"{word} is not supported")
            else:
                nodes.append(("out", val))
        if stop:
            raise TemplateError(f"missing {{{{ end }}}} (wanted one of {sorted(stop)})")
        return nodes, ""

    tree, _ = block(set())
    return tree


# ---------------------------------------------------------------------------------- evaluation

class Scope:
    def __init__(self, parent: "Scope | None" = None):
        self.vars: dict[str, Any] = {}
        self.parent = parent

    def get(self, name: str) -> Any:
        s: Scope | None = self
        while s:
            if name in s.vars:
                return s.vars[name]
            s = s.parent
        raise TemplateError(f"undefined variable {name}")

    def set(self, name: str, value: Any) -> None:
        s: Scope | None = self
        while s:
            if name in s.vars:
                s.vars[name] = value
                return
            s = s.parent
        raise TemplateError(f"assignment to undeclared {name}")


def truthy(v: Any) -> bool:
    return not (v is None or v is False or v == 0 or v == "" or v == [] or v == {})


def field(v: Any, path: list[str]) -> Any:
    for p in path:
        if v is None:
            return None
        if isinstance(v, dict):
            v = v.get(p)
        else:
            raise TemplateError(f"cannot take .{p} of {type(v).__name__}")
    return v


def to_str(v: Any) -> str:
    if v is None:
        return ""
    if v is True or v is False:
        return "true" if v else "false"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def to_yaml(v: Any) -> str:
    return yaml.safe_dump(v, default_flow_style=False, sort_keys=True).rstrip("\n")


class Renderer:
    def __init__(self, defines: dict[str, list]):
        self.defines = defines
        self.depth = 0

    def funcs(self, name: str):
        def include(tname, ctx):
            if tname not in self.defines:
                raise TemplateError(f"no template {tname!r}")
            self.depth += 1
            if self.depth > 50:
                raise TemplateError("include nested too deep")
            try:
                return self.render(self.defines[tname], ctx, Scope(), ctx)
            finally:
                self.depth -= 1

        def indent(n, s):
            return "\n".join(" " * int(n) + line for line in to_str(s).split("\n"))

        def printf(fmt, *args):
            return re.sub(r"%[sdvq]", "%s", fmt) % tuple(to_str(a) if not isinstance(a, int)
                                                         else a for a in args)

        def default(d, v=None):
            return v if truthy(v) else d

        table = {
            "include": include,
            "indent": indent,
            "nindent": lambda n, s: "\n" + indent(n, s),
            "printf": printf,
            "quote": lambda *a: " ".join('"' + to_str(x).replace("\\", "\\\\").replace('"', '\\"')
                                         + '"' for x in a),
            "toYaml": to_yaml,
            "trunc": lambda n, s: to_str(s)[:int(n)],
            "trimSuffix": lambda suf, s: to_str(s)[:-len(suf)] if suf and to_str(s).endswith(suf)
            else to_str(s),
            "list": lambda *a: list(a),
            "append": lambda lst, v: list(lst or []) + [v],
            "join": lambda sep, lst: sep.join(to_str(x) for x in lst),
            "ternary": lambda a, b, c: a if truthy(c) else b,
            "int": lambda v: int(v or 0),
            "until": lambda n: list(range(int(n))),
            "dict": lambda *a: {to_str(a[i]): a[i + 1] for i in range(0, len(a) - 1, 2)},
            "eq": lambda a, *b: all(a == x for x in b),
            "ne": lambda a, b: a != b,
            "not": lambda v: not truthy(v),
            "and": lambda *a: next((x for x in a if not truthy(x)), a[-1]),
            "or": lambda *a: next((x for x in a if truthy(x)), a[-1]),
            "default": default,
            "len": lambda v: len(v or []),
        }
        if name not in table:
            raise TemplateError(f"unknown function {name}")
        return table[name]

    def pipeline(self, toks: list, dot: Any, scope: Scope, root: Any) -> Any:
        """Evaluates a pipeline given as tokens (assignments handled by the caller)."""
        cmds: list[list] = [[]]
        depth = 0
        for t in toks:
            if t == ("op", "(") :
                depth += 1
            elif t == ("op", ")"):
                depth -= 1
            if t == ("op", "|") and depth == 0:
                cmds.append([])
            else:
                cmds[-1].append(t)
        value: Any = None
        for i, cmd in enumerate(cmds):
            value = self.command(cmd, dot, scope, root, piped=(value,) if i else ())
        return value

    def operands(self, toks: list, dot, scope, root) -> list:
        out = []
        i = 0
        while i < len(toks):
            kind, val = toks[i]
            if (kind, val) == ("op", "("):
                depth, j = 1, i + 1
                while depth:
                    if j >= len(toks):
                        raise TemplateError("unbalanced (")
                    depth += {"(": 1, ")": -1}.get(toks[j][1], 0) if toks[j][0] == "op" else 0
                    j += 1
                out.append(("value", self.pipeline(toks[i + 1:j - 1], dot, scope, root)))
                i = j
                continue
            if kind == "str":
                out.append(("value", bytes(val[1:-1], "utf-8").decode("unicode_escape")))
            elif kind == "num":
                out.append(("value", int(val)))
            elif kind == "word":
                if val in ("true", "false"):
                    out.append(("value", val == "true"))
                elif val == ".":
                    out.append(("value", dot))
                elif val.startswith("."):
                    out.append(("value", field(dot, val[1:].split("."))))
                elif val.startswith("$"):
                    name, *path = val.split(".")
                    base = root if name == "$" else scope.get(name)
                    out.append(("value", field(base, path)))
                else:
                    out.append(("func", val))
            else:
                raise TemplateError(f"unexpected {val!r}")
            i += 1
        return out

    def command(self, toks, dot, scope, root, piped=()) -> Any:
        ops = self.operands(toks, dot, scope, root)
        if not ops:
            raise TemplateError("empty command")
        if ops[0][0] == "func":
            args = [v for k, v in ops[1:]]
            if any(k == "func" for k, _ in ops[1:]):
                raise TemplateError(f"a function as an argument in {toks}")
            return self.funcs(ops[0][1])(*args, *piped)
        if len(ops) > 1 or piped:
            raise TemplateError(f"cannot call a value: {toks}")
        return ops[0][1]

    def expr(self, src: str, dot, scope: Scope, root) -> tuple[Any, bool]:
        """(value, printed?): assignments print nothing."""
        toks = tokens(src)
        if len(toks) >= 2 and toks[0][0] == "word" and toks[0][1].startswith("$") \
                and toks[1] in (("op", ":="), ("op", "=")):
            value = self.pipeline(toks[2:], dot, scope, root)
            if toks[1][1] == ":=":
                scope.vars[toks[0][1]] = value
            else:
                scope.set(toks[0][1], value)
            return value, False
        return self.pipeline(toks, dot, scope, root), True

    def render(self, nodes: list, dot: Any, scope: Scope, root: Any) -> str:
        out = []
        for n in nodes:
            kind = n[0]
            if kind == "text":
                out.append(n[1])
            elif kind == "out":
                value, printed = self.expr(n[1], dot, scope, root)
                if printed:
                    out.append(to_str(value))
            elif kind == "if":
                for cond, body in n[1]:
                    inner = Scope(scope)
                    if truthy(self.expr(cond, dot, inner, root)[0]):
                        out.append(self.render(body, dot, inner, root))
                        break
                else:
                    if n[2] is not None:
                        out.append(self.render(n[2], dot, Scope(scope), root))
            elif kind == "with":
                inner = Scope(scope)
                value = self.expr(n[1], dot, inner, root)[0]
                if truthy(value):
                    out.append(self.render(n[2], value, inner, root))
                elif n[3] is not None:
                    out.append(self.render(n[3], dot, inner, root))
            elif kind == "range":
                _, names, src, body = n
                seq = self.expr(src, dot, Scope(scope), root)[0]
                pairs = (sorted(seq.items()) if isinstance(seq, dict)
                         else list(enumerate(seq or [])))
                for k, v in pairs:
                    inner = Scope(scope)
                    if len(names) == 1:
                        inner.vars[names[0]] = v
                    elif len(names) == 2:
                        inner.vars[names[0]], inner.vars[names[1]] = k, v
                    out.append(self.render(body, v, inner, root))
            elif kind == "define":
                pass
            else:
                raise TemplateError(f"bad node {kind}")
        return "".join(out)


def collect_defines(tree: list, into: dict) -> None:
    for n in tree:
        if n[0] == "define":
            into[n[1]] = n[2]


def merge(base: Any, over: Any) -> Any:
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            out[k] = merge(base.get(k), v)
        return out
    return copy.deepcopy(over)


def render_chart(chart: Path, values: dict | None = None, release: str = "test",
                 namespace: str = "default", is_install: bool = True) -> dict[str, list]:
    """{template file name: [objects]} for every template of the chart."""
    meta = yaml.safe_load((chart / "Chart.yaml").read_text())
    vals = merge(yaml.safe_load((chart / "values.yaml").read_text()) or {}, values or {})
    root = {
        "Values": vals,
        "Release": {"Name": release, "Namespace": namespace, "IsInstall": is_install,
                    "IsUpgrade": not is_install, "Service": "Helm"},
        "Chart": {"Name": meta["name"], "Version": meta["version"],
                  "AppVersion": meta.get("appVersion", "")},
    }
    trees = {}
    defines: dict[str, list] = {}
    for f in sorted((chart / "templates").iterdir()):
        if f.suffix not in (".yaml", ".yml", ".tpl"):
            continue
        tree = parse(lex(f.read_text()))
        collect_defines(tree, defines)
        if not f.name.startswith("_"):
            trees[f.name] = tree
    r = Renderer(defines)
    out = {}
    for name, tree in trees.items():
        text = r.render(tree, root, Scope(), root)
        out[name] = [d for d in yaml.safe_load_all(text) if d]
    return out
