"""Docstring → function pairs from source files of nine languages, parsed with tree-sitter grammars.

Output contract of :func:`pairs` (one tuple per documented function with a body, in source order,
nested functions after their enclosing one)::

    (docstring: str, code: str)

``docstring`` is the cleaned documentation text (comment markers removed, common indentation
removed); ``code`` is the function's source, dedented, without its documentation: Python's
docstring statement is cut out of the body, and the other languages' doc comments stand before the
function node, outside it. What counts as documentation, per language:

- python: the body's first statement when it is a string literal (``ast``'s definition);
- java, javascript, typescript, php, cpp: a ``/** ... */`` block right before the declaration (cpp
  also ``///`` lines);
- rust: ``///`` lines (or ``/** */``) before the item, attributes in between allowed;
- go, ruby: the ``//`` or ``#`` comment lines directly above the declaration, no blank line between.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from typing import Any


@dataclass(frozen=True)
class Grammar:
    """How one language's functions and their documentation look in its tree-sitter grammar."""

    module: str
    """PyPI grammar module (``tree_sitter_<lang>``)."""
    entry: str
    """Function of that module returning the language pointer."""
    suffixes: tuple[str, ...]
    """File name endings read for this language."""
    functions: frozenset[str]
    """Node types of functions and methods (only those with a body are used)."""
    doc_markers: tuple[str, ...] = ("/**",)
    """A preceding comment is documentation when it starts with one of these (python: unused)."""
    wrappers: frozenset[str] = frozenset()
    """Parent nodes that carry the comment for the function inside them (export, template)."""
    skip_between: frozenset[str] = frozenset()
    """Sibling nodes allowed between the doc comment and the function (Rust attributes)."""
    adjacent_lines: bool = False
    """Doc comments are runs of line comments that end on the line just above the function."""


_JAVASCRIPT = Grammar(
    "tree_sitter_javascript",
    "language",
    (".js", ".mjs", ".cjs"),
    frozenset({"function_declaration", "generator_function_declaration", "method_definition"}),
    wrappers=frozenset({"export_statement"}),
)
GRAMMARS: dict[str, Grammar] = {
    "python": Grammar("tree_sitter_python", "language", (".py",), frozenset({"function_definition"})),
    "java": Grammar(
        "tree_sitter_java", "language", (".java",), frozenset({"method_declaration", "constructor_declaration"})
    ),
    "javascript": _JAVASCRIPT,
    "typescript": dataclasses.replace(
        _JAVASCRIPT, module="tree_sitter_typescript", entry="language_typescript", suffixes=(".ts", ".mts", ".cts")
    ),
    "go": Grammar(
        "tree_sitter_go",
        "language",
        (".go",),
        frozenset({"function_declaration", "method_declaration"}),
        doc_markers=("//",),
        adjacent_lines=True,
    ),
    "rust": Grammar(
        "tree_sitter_rust",
        "language",
        (".rs",),
        frozenset({"function_item"}),
        doc_markers=("///", "/**"),
        skip_between=frozenset({"attribute_item"}),
    ),
    "cpp": Grammar(
        "tree_sitter_cpp",
        "language",
        (".h", ".hh", ".hpp", ".hxx", ".cc", ".cpp", ".cxx"),
        frozenset({"function_definition"}),
        doc_markers=("/**", "///"),
        wrappers=frozenset({"template_declaration"}),
    ),
    "php": Grammar(
        "tree_sitter_php", "language_php", (".php",), frozenset({"function_definition", "method_declaration"})
    ),
    "ruby": Grammar(
        "tree_sitter_ruby",
        "language",
        (".rb",),
        frozenset({"method", "singleton_method"}),
        doc_markers=("#",),
        adjacent_lines=True,
    ),
}
_INLINE_TAG = re.compile(r"\{@(?:link|linkplain|code|literal)\s+([^}]*)\}")
_NOT_DOC = re.compile(r"^#(!|\s*(frozen_string_literal|rubocop|:nodoc:|-\*-|encoding))|^//(go:|\s*nolint|\s*\+build)")


@cache
def parser(language: str) -> Any:
    """A tree-sitter parser for ``language`` (grammar from its PyPI package)."""
    from tree_sitter import Language, Parser

    grammar = GRAMMARS[language]
    try:
        module = importlib.import_module(grammar.module)
    except ImportError:
        package = grammar.module.replace("_", "-")
        raise ValueError(f"the {language} grammar is not installed: pip install {package}") from None
    return Parser(Language(getattr(module, grammar.entry)()))


def pairs(language: str, source: bytes) -> Iterator[tuple[str, str]]:
    """(docstring, code) for every documented function of one source file (see the module contract)."""
    grammar = GRAMMARS[language]
    tree = parser(language).parse(source)
    stack = [tree.root_node]
    while stack:
        node = stack.pop()
        stack.extend(reversed(node.named_children))
        if node.type not in grammar.functions or node.child_by_field_name("body") is None:
            continue
        found = _python_pair(node, source) if language == "python" else _commented_pair(node, source, grammar)
        if found is not None:
            yield found


def _python_pair(node: Any, source: bytes) -> tuple[str, str] | None:
    body = node.child_by_field_name("body")
    first = body.named_children[0] if body.named_children else None
    if first is None or first.type != "expression_statement" or first.named_children[0].type != "string":
        return None
    try:
        value = ast.literal_eval(_text(first.named_children[0], source))
    except (ValueError, SyntaxError):
        return None  # f-strings and byte strings are not docstrings
    if not isinstance(value, str):
        return None
    outer = node.parent if node.parent is not None and node.parent.type == "decorated_definition" else node
    lines = source.decode("utf-8", "replace").splitlines(keepends=True)
    start, end = outer.start_point.row, node.end_point.row
    kept = lines[start : first.start_point.row] + lines[first.end_point.row + 1 : end + 1]
    return inspect.cleandoc(value), dedent("".join(kept))


def _commented_pair(node: Any, source: bytes, grammar: Grammar) -> tuple[str, str] | None:
    anchor = node.parent if node.parent is not None and node.parent.type in grammar.wrappers else node
    comments = _doc_comments(anchor, source, grammar)
    if not comments:
        return None
    doc = clean_comment(comments)
    if not doc:
        return None
    code = " " * anchor.start_point.column + _text(anchor, source)
    return doc, dedent(code)


def _doc_comments(anchor: Any, source: bytes, grammar: Grammar) -> list[str]:
    """The comment texts documenting ``anchor``, top to bottom (empty when it has none)."""
    sibling, top = anchor.prev_named_sibling, anchor.start_point.row
    if sibling is None and anchor.parent is not None:
        sibling = anchor.parent.prev_named_sibling  # Ruby: a class's first comment precedes its body node
    while sibling is not None and sibling.type in grammar.skip_between:
        top, sibling = sibling.start_point.row, sibling.prev_named_sibling
    found: list[str] = []
    while sibling is not None and "comment" in sibling.type and sibling.end_point.row >= top - 1:
        text = _text(sibling, source).strip()
        if not text.startswith(grammar.doc_markers) or _NOT_DOC.match(text):
            break
        found.insert(0, text)
        if not grammar.adjacent_lines and not text.startswith("///"):
            break  # one /** */ block documents the function; /// lines come as a run
        top, sibling = sibling.start_point.row, sibling.prev_named_sibling
    return found


def clean_comment(comments: list[str]) -> str:
    """Documentation text of comment tokens: ``/** */``, ``*``, ``///``, ``//``, ``#`` markers removed."""
    lines: list[str] = []
    for text in comments:
        text = text.strip()
        if text.startswith("/*"):
            text = text[2:].lstrip("*!")
            text = text[:-2] if text.endswith("*/") else text
        for line in text.splitlines():
            line = line.strip()
            for marker in ("///", "//!", "//", "#", "*"):
                if line.startswith(marker):
                    line = line[len(marker) :]
                    break
            lines.append(line.rstrip())
    text = inspect.cleandoc("\n".join(lines))
    text = _INLINE_TAG.sub(r"\1", text)
    text = re.sub(r"^[@\\]brief\s+", "", text)
    # Javadoc/JSDoc/phpdoc tags and HTML paragraphs end the description
    text = re.split(r"(?:^|\n)\s*@|<p>|<P>", text, maxsplit=1)[0]
    return text.strip()


def dedent(code: str) -> str:
    """Remove the common leading whitespace and surrounding blank lines."""
    rows = code.splitlines()
    indent = min((len(r) - len(r.lstrip()) for r in rows if r.strip()), default=0)
    return "\n".join(r[indent:] for r in rows).strip("\n")


def _text(node: Any, source: bytes) -> str:
    return source[node.start_byte : node.end_byte].decode("utf-8", "replace")
