"""Airflow- and KFP-aware checks over a Python file's syntax tree.

Regexes cannot tell ``Connection(password="x")`` from a log message that mentions
it, nor a component parameter's default from a call argument. The tree can, and
``ast`` parses without importing anything: the scanner never imports Airflow or
KFP, so it runs in a bare CI job and never executes the code it inspects.

Rules produced here: airflow-connection-password, airflow-variable-secret,
airflow-conn-env-literal, kfp-env-literal-secret, kfp-component-default-secret,
kfp-pipeline-arg-secret, and the generic secret-assignment / high-entropy-secret
for assignments, keyword arguments, dict entries and parameter defaults.
"""

from __future__ import annotations

import ast
import bisect
import re
import warnings

from .models import Hit
from .names import is_secret_name
from .patterns import classify_literal, connection_value_has_credentials, uri_password_span
from .textindex import TextIndex
from .values import is_placeholder

_KFP_COMPONENT_DECORATORS = frozenset({"component", "container_component", "create_component_from_func"})
_KFP_PIPELINE_DECORATORS = frozenset({"pipeline"})
_KFP_ARGUMENT_KEYWORDS = frozenset(
    {"arguments", "params", "parameters", "pipeline_parameters", "parameter_values", "pipeline_arguments"}
)
_ENV_SETTERS = frozenset({"setdefault", "setenv", "putenv", "__setitem__"})
_MAGIC_LINE = re.compile(r"^(\s*)[%!]", re.MULTILINE)


def _tail_name(node: ast.AST) -> str | None:
    """``Connection`` for ``Connection``, ``models.Connection`` and ``Connection()``."""
    if isinstance(node, ast.Call):
        node = node.func
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def _literal(node: ast.AST | None) -> str | None:
    """The string a node denotes when it is a plain literal (str or bytes)."""
    if isinstance(node, ast.Constant):
        if isinstance(node.value, str):
            return node.value
        if isinstance(node.value, bytes):
            return node.value.decode("utf-8", errors="replace")
    return None


def _target_name(node: ast.AST) -> str | None:
    """The name an assignment target binds: ``x``, ``self.x`` or ``d["x"]``."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Subscript):
        return _literal(node.slice)
    return None


def _call_arg(call: ast.Call, position: int, keyword: str) -> ast.AST | None:
    for kw in call.keywords:
        if kw.arg == keyword:
            return kw.value
    if len(call.args) > position and not any(isinstance(a, ast.Starred) for a in call.args[: position + 1]):
        return call.args[position]
    return None


class _Checker(ast.NodeVisitor):
    """Collects hits in one walk; ``kfp_functions`` are known component/pipeline names."""

    def __init__(self, index: TextIndex, kfp_functions: set[str], focus_lines: list[int] | None) -> None:
        self.index = index
        self.kfp_functions = kfp_functions
        self.hits: list[Hit] = []
        self._in_pipeline = 0
        self._focus = focus_lines

    # -- pruning --------------------------------------------------------------
    def _touches(self, node: ast.stmt) -> bool:
        """Does the statement span a line where the prefilter saw a keyword?

        Every AST rule needs a secret-like name, ``Connection(``, ``AIRFLOW_CONN_``
        or ``://`` somewhere in the statement, so statements without such a line
        are skipped whole; on DAG-sized files this skips most of the tree.
        """
        if self._focus is None:
            return True
        i = bisect.bisect_left(self._focus, node.lineno)
        return i < len(self._focus) and self._focus[i] <= (node.end_lineno or node.lineno)

    def generic_visit(self, node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.stmt) and not self._touches(child):
                continue
            self.visit(child)

    # -- hit construction ---------------------------------------------------
    def _col(self, line: int, byte_col: int) -> int:
        """AST columns are UTF-8 byte offsets; hits use character columns."""
        text = self.index.line_text(line)
        if text.isascii():
            return byte_col
        return len(text.encode("utf-8")[:byte_col].decode("utf-8", errors="replace"))

    def _hit(self, rule_id: str, node: ast.AST, span: tuple[int, int] | None = None) -> None:
        line = node.lineno
        start = self._col(line, node.col_offset)
        end: int | None = None
        if getattr(node, "end_lineno", None) == line:
            end = self._col(line, node.end_col_offset)
        if span is not None and end is not None:
            # Narrow to a sub-span of a single-line literal (e.g. a URI's password),
            # assuming one prefix/quote char; falls back to the whole literal.
            literal_src = self.index.line_text(line)[start:end]
            value = _literal(node) or ""
            offset = literal_src.find(value) if value else -1
            if offset >= 0:
                start, end = start + offset + span[0], start + offset + span[1]
        self.hits.append(Hit(rule_id, line, start, end))

    def _generic(self, name: str | None, node: ast.AST | None) -> None:
        value = _literal(node)
        if name is None or value is None:
            return
        if name.startswith("AIRFLOW_CONN_"):
            self._airflow_conn(node)
            return
        rule = classify_literal(name, value)
        if rule is not None:
            self._hit(rule, node)

    def _secret_literal(self, rule_id: str, name: str | None, node: ast.AST | None) -> bool:
        """Report ``node`` under a context-specific rule when it is a real secret."""
        value = _literal(node)
        if name is None or value is None:
            return False
        if classify_literal(name, value) is None:
            return False
        self._hit(rule_id, node)
        return True

    def _airflow_conn(self, node: ast.AST | None) -> None:
        value = _literal(node)
        if value is not None and connection_value_has_credentials(value):
            self._hit("airflow-conn-env-literal", node)

    # -- visitors -----------------------------------------------------------
    def visit_Assign(self, node: ast.Assign) -> None:
        for target in node.targets:
            if isinstance(target, (ast.Tuple, ast.List)) and isinstance(node.value, (ast.Tuple, ast.List)):
                for sub_target, sub_value in zip(target.elts, node.value.elts):
                    self._generic(_target_name(sub_target), sub_value)
            else:
                self._generic(_target_name(target), node.value)
        self.generic_visit(node)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        self._generic(_target_name(node.target), node.value)
        self.generic_visit(node)

    def visit_Dict(self, node: ast.Dict) -> None:
        for key, value in zip(node.keys, node.values):
            self._generic(_literal(key) if key is not None else None, value)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        name = _tail_name(node.func)
        owner = _tail_name(node.func.value) if isinstance(node.func, ast.Attribute) else None
        handled: set[int] = set()

        if name == "Connection":
            handled |= self._connection(node)
        elif name == "set" and owner == "Variable":
            key = _literal(_call_arg(node, 0, "key"))
            value = _call_arg(node, 1, "value")
            if key is not None and is_secret_name(key) and self._secret_literal("airflow-variable-secret", key, value):
                handled.add(id(value))
        elif name == "set_env_variable":
            env_name = _literal(_call_arg(node, 0, "name"))
            value = _call_arg(node, 1, "value")
            if env_name is not None and self._secret_literal("kfp-env-literal-secret", env_name, value):
                handled.add(id(value))
        elif name in _ENV_SETTERS and len(node.args) >= 2:
            self._generic(_literal(node.args[0]), node.args[1])
            handled.add(id(node.args[1]))

        to_kfp_function = self._in_pipeline or (name in self.kfp_functions)
        for kw in node.keywords:
            if kw.arg is None or id(kw.value) in handled:
                continue
            if kw.arg in _KFP_ARGUMENT_KEYWORDS and isinstance(kw.value, ast.Dict):
                for key, value in zip(kw.value.keys, kw.value.values):
                    key_name = _literal(key) if key is not None else None
                    self._secret_literal("kfp-pipeline-arg-secret", key_name, value)
                continue
            if kw.arg.startswith("AIRFLOW_CONN_"):
                self._airflow_conn(kw.value)
            elif to_kfp_function and self._secret_literal("kfp-pipeline-arg-secret", kw.arg, kw.value):
                pass
            else:
                self._generic(kw.arg, kw.value)
        self.generic_visit(node)

    def _connection(self, node: ast.Call) -> set[int]:
        """Connection(...): literal password=, uri= with inline password, extra= JSON."""
        handled: set[int] = set()
        # Airflow's own default connections use password="airflow" with login="airflow"
        # or schema="airflow": public defaults, not leaked secrets.
        others = {
            (_literal(kw.value) or "").lower() for kw in node.keywords if kw.arg in ("login", "schema", "host", "conn_id")
        }
        for kw in node.keywords:
            value = _literal(kw.value)
            if value is None:
                continue
            if kw.arg == "password" and value.lower() in others:
                handled.add(id(kw.value))
                continue
            if kw.arg == "password" and not is_placeholder(value, "password"):
                self._hit("airflow-connection-password", kw.value)
            elif kw.arg == "uri" or (kw.arg is None):
                span = uri_password_span(value)
                if span is not None:
                    self._hit("airflow-connection-password", kw.value, span)
            elif kw.arg == "extra" and connection_value_has_credentials(value):
                self._hit("airflow-connection-password", kw.value)
            else:
                continue
            handled.add(id(kw.value))
        for arg in node.args:
            value = _literal(arg)
            if value is not None:
                span = uri_password_span(value)
                if span is not None:
                    self._hit("airflow-connection-password", arg, span)
        return handled

    def _visit_function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        decorators = {_tail_name(d) for d in node.decorator_list}
        is_component = bool(decorators & _KFP_COMPONENT_DECORATORS)
        is_pipeline = bool(decorators & _KFP_PIPELINE_DECORATORS)
        args = node.args
        positional = args.posonlyargs + args.args
        pairs = list(zip(positional[len(positional) - len(args.defaults):], args.defaults))
        pairs += [(a, d) for a, d in zip(args.kwonlyargs, args.kw_defaults) if d is not None]
        for arg, default in pairs:
            if is_component or is_pipeline:
                self._secret_literal("kfp-component-default-secret", arg.arg, default)
            else:
                self._generic(arg.arg, default)
        if is_pipeline:
            self._in_pipeline += 1
            self.generic_visit(node)
            self._in_pipeline -= 1
        else:
            self.generic_visit(node)

    visit_FunctionDef = _visit_function
    visit_AsyncFunctionDef = _visit_function


def _kfp_function_names(tree: ast.Module) -> set[str]:
    """Names of top-level functions decorated as KFP components or pipelines."""
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            decorators = {_tail_name(d) for d in node.decorator_list}
            if decorators & (_KFP_COMPONENT_DECORATORS | _KFP_PIPELINE_DECORATORS):
                names.add(node.name)
    return names


def parse_python(text: str) -> ast.Module | None:
    """Parse source without executing it; retry with notebook magics blanked.

    Notebook exports keep ``%pip``/``!cmd`` lines that are not Python; commenting
    them out keeps every other line's numbers and columns intact.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # invalid escape sequences etc. in scanned code
        try:
            return ast.parse(text)
        except (SyntaxError, ValueError):
            pass
        if _MAGIC_LINE.search(text):
            try:
                return ast.parse(_MAGIC_LINE.sub(r"\1#", text))
            except (SyntaxError, ValueError):
                return None
    return None


def check_python(index: TextIndex, tree: ast.Module, focus_lines: list[int] | None = None) -> list[Hit]:
    """Run every AST rule over ``tree`` (parsed from ``index.text``).

    ``focus_lines`` (sorted, 1-based) limits the walk to statements spanning one
    of them; None walks everything.
    """
    checker = _Checker(index, _kfp_function_names(tree), focus_lines)
    checker.visit(tree)
    return checker.hits
