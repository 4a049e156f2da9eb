"""Find the WSGI app: `module:name`, `module:factory()`, `module:factory('prod', debug=False)`."""

from __future__ import annotations

import ast
import importlib


class AppSpecError(Exception):
    """The app spec is not of a form berth understands (a configuration error)."""


def parse_app_uri(uri: str) -> tuple[str, ast.expr]:
    module, _, expr = uri.partition(":")
    if not module or not all(part.isidentifier() for part in module.split(".")):
        raise AppSpecError(f"app {uri!r}: expected MODULE:NAME, e.g. myproject.wsgi:application")
    expr = expr or "application"
    try:
        node = ast.parse(expr.strip(), mode="eval").body
    except SyntaxError:
        raise AppSpecError(f"app {uri!r}: {expr!r} is not a name or a factory call") from None
    call = node
    if isinstance(call, ast.Call):
        try:
            for arg in call.args:
                ast.literal_eval(arg)
            for kw in call.keywords:
                if kw.arg is None:
                    raise ValueError
                ast.literal_eval(kw.value)
        except ValueError:
            raise AppSpecError(f"app {uri!r}: factory arguments must be literals") from None
        node = call.func
    while isinstance(node, ast.Attribute):
        node = node.value
    if not isinstance(node, ast.Name):
        raise AppSpecError(f"app {uri!r}: {expr!r} is not a name or a factory call")
    return module, call


def _resolve(obj, node: ast.expr, uri: str):
    if isinstance(node, ast.Name):
        try:
            return getattr(obj, node.id)
        except AttributeError:
            raise AttributeError(f"app {uri!r}: module has no attribute {node.id!r}") from None
    if isinstance(node, ast.Attribute):
        return getattr(_resolve(obj, node.value, uri), node.attr)
    raise AppSpecError(f"app {uri!r}: unsupported expression")


def load_app(uri: str):
    """Import the module and return the WSGI callable (calling the factory if one is named)."""
    module_name, node = parse_app_uri(uri)
    module = importlib.import_module(module_name)
    if isinstance(node, ast.Call):
        factory = _resolve(module, node.func, uri)
        args = [ast.literal_eval(a) for a in node.args]
        kwargs = {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords}
        app = factory(*args, **kwargs)
    else:
        app = _resolve(module, node, uri)
    if not callable(app):
        raise TypeError(f"app {uri!r}: {type(app).__name__} object is not callable")
    return app
