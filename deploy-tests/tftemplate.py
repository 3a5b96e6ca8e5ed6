"""The part of Terraform's template language (`templatefile`) that our `.tftpl` files use.

Why not call Terraform: the render-and-validate test must run where no `terraform` binary is
installed. Where one is, test_terraform.py also renders every template with `terraform
console` and requires byte-identical output, so this subset cannot drift from the real thing.

Supported, with Terraform's semantics:
- `${name}` and `${jsonencode(name)}` interpolation (strings as is, numbers, bools as
  `true`/`false`; anything else is an error, as in Terraform);
- `%{ if name }`, `%{ if name != "" }`, `%{ if name == "" }`, `%{ else }`, `%{ endif }`;
- `%{ for x in name }` ... `%{ endfor }` over a list;
- strip markers `${~ ... ~}` / `%{~ ... ~}` (as HCL does: the whitespace of the adjacent
  line only, its newline included), and the escapes `$${` and `%%{`.
An unknown variable or an unsupported construct raises `TemplateError`, never renders silently.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

__all__ = ["TemplateError", "render", "jsonencode"]


class TemplateError(Exception):
    pass


def jsonencode(value: object) -> str:
    """Terraform's jsonencode: compact JSON, with Go's HTML-safe escapes of <, > and &."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(ch, esc)
    return text


# -- tokens ----------------------------------------------------------------------------------


@dataclass
class _Lit:
    text: str


@dataclass
class _Interp:
    expr: str


@dataclass
class _Dir:
    words: str


_OPEN = re.compile(r"(\$\$\{|%%\{|\$\{|%\{)")


# HCL scans a template literal as one token per line (each ending with its newline), and a
# strip marker trims only the adjacent token: `~}` the whitespace at the start of the next
# line-token (its newline included), `{~` the whitespace at the end of the previous one.
def _strip_after(lit: str) -> str:
    first, nl, rest = lit.partition("\n")
    return (first + nl).lstrip(" \t\r\n") + rest


def _strip_before(lit: str) -> str:
    lines = lit.splitlines(keepends=True) or [""]
    return "".join(lines[:-1]) + lines[-1].rstrip(" \t\r\n")


def _tokenize(src: str) -> list[object]:
    tokens: list[object] = []
    strip_next = False
    pos = 0
    buf = ""
    while True:
        m = _OPEN.search(src, pos)
        if m is None:
            buf += src[pos:]
            break
        buf += src[pos : m.start()]
        opener = m.group(1)
        if opener in ("$${", "%%{"):
            buf += opener[1:]
            pos = m.end()
            continue
        end = src.find("}", m.end())
        if end < 0:
            raise TemplateError(f"unclosed {opener} at offset {m.start()}")
        inner = src[m.end() : end]
        strip_before = inner.startswith("~")
        strip_after = inner.endswith("~")
        inner = inner.strip("~").strip()
        if strip_next:
            buf = _strip_after(buf)
        if strip_before:
            buf = _strip_before(buf)
        tokens.append(_Lit(buf))
        strip_next = False
        buf = ""
        tokens.append(_Interp(inner) if opener == "${" else _Dir(inner))
        strip_next = strip_after
        pos = end + 1
    tokens.append(_Lit(_strip_after(buf) if strip_next else buf))
    return tokens


# -- tree ------------------------------------------------------------------------------------


@dataclass
class _If:
    cond: str
    then: list = field(default_factory=list)
    other: list = field(default_factory=list)


@dataclass
class _For:
    var: str
    seq: str
    body: list = field(default_factory=list)


def _parse(tokens: list[object]) -> list[object]:
    root: list[object] = []
    stack: list[tuple[object, list]] = [(None, root)]
    for tok in tokens:
        node, out = stack[-1]
        if not isinstance(tok, _Dir):
            out.append(tok)
            continue
        words = tok.words
        if words.startswith("if "):
            new = _If(words[3:].strip())
            out.append(new)
            stack.append((new, new.then))
        elif words == "else":
            if not isinstance(node, _If):
                raise TemplateError("%{ else } outside %{ if }")
            stack[-1] = (node, node.other)
        elif words == "endif":
            if not isinstance(node, _If):
                raise TemplateError("%{ endif } without %{ if }")
            stack.pop()
        elif words.startswith("for "):
            m = re.fullmatch(r"for\s+(\w+)\s+in\s+(\w+)", words)
            if not m:
                raise TemplateError(f"unsupported for directive: {words!r}")
            new = _For(m.group(1), m.group(2))
            out.append(new)
            stack.append((new, new.body))
        elif words == "endfor":
            if not isinstance(node, _For):
                raise TemplateError("%{ endfor } without %{ for }")
            stack.pop()
        else:
            raise TemplateError(f"unsupported directive: %{{ {words} }}")
    if len(stack) != 1:
        raise TemplateError("unclosed %{ if } or %{ for }")
    return root


# -- evaluation ------------------------------------------------------------------------------


def _lookup(name: str, scope: dict[str, object]) -> object:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", name):
        raise TemplateError(f"unsupported expression: {name!r}")
    if name not in scope:
        raise TemplateError(f"vars map does not contain key {name!r}")
    return scope[name]


def _to_string(value: object, expr: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    raise TemplateError(f"cannot interpolate {type(value).__name__} ({expr})")


def _interp(expr: str, scope: dict[str, object]) -> str:
    m = re.fullmatch(r"jsonencode\((\w+)\)", expr)
    if m:
        return jsonencode(_lookup(m.group(1), scope))
    return _to_string(_lookup(expr, scope), expr)


def _cond(cond: str, scope: dict[str, object]) -> bool:
    m = re.fullmatch(r'(\w+)\s*(==|!=)\s*""', cond)
    if m:
        value = _lookup(m.group(1), scope)
        if not isinstance(value, str):
            raise TemplateError(f"{m.group(1)} compared with a string but is {type(value).__name__}")
        return (value == "") == (m.group(2) == "==")
    value = _lookup(cond, scope)
    if not isinstance(value, bool):
        raise TemplateError(f"condition {cond!r} is not a bool")
    return value


def _eval(nodes: list[object], scope: dict[str, object]) -> str:
    out = []
    for n in nodes:
        if isinstance(n, _Lit):
            out.append(n.text)
        elif isinstance(n, _Interp):
            out.append(_interp(n.expr, scope))
        elif isinstance(n, _If):
            out.append(_eval(n.then if _cond(n.cond, scope) else n.other, scope))
        elif isinstance(n, _For):
            seq = _lookup(n.seq, scope)
            if not isinstance(seq, list):
                raise TemplateError(f"for over {n.seq}, which is not a list")
            for item in seq:
                out.append(_eval(n.body, {**scope, n.var: item}))
    return "".join(out)


def render(template: str, variables: dict[str, object]) -> str:
    """`templatefile(path, variables)` for the supported subset."""
    return _eval(_parse(_tokenize(template)), variables)
