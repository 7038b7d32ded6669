"""The code-shape figures of issue 26: pipeline file lines, ``__call__`` lines of code, ``check_inputs`` parameters,
and the import cycles among ``magic_remover``'s modules.

    PYTHONPATH=$PWD python benchmarks/code_shape.py

Lines of code: non-blank lines that are not comments, without the docstring. Imports: every ``from .x import`` and
``from magic_remover.x import`` anywhere in a module (lazy imports inside functions included: they close a cycle too).
"""

from __future__ import annotations

import ast
import io
import tokenize
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "magic_remover"


def code_lines(source: str, node: ast.FunctionDef) -> int:
    """Non-blank, non-comment lines of ``node``'s body, its docstring left out."""
    body = node.body
    first = body[0]
    if isinstance(first, ast.Expr) and isinstance(getattr(first, "value", None), ast.Constant) and isinstance(
        first.value.value, str
    ):
        body = body[1:]
    lines = source.splitlines()[body[0].lineno - 1 : node.end_lineno]
    comments = {t.start[0] for t in tokenize.generate_tokens(io.StringIO("\n".join(lines)).readline)
                if t.type == tokenize.COMMENT and t.line.strip().startswith("#")}  # fmt: skip
    return sum(1 for n, line in enumerate(lines, 1) if line.strip() and n not in comments)


def method(tree: ast.Module, class_name: str, name: str) -> ast.FunctionDef:
    cls = next(c for c in tree.body if isinstance(c, ast.ClassDef) and c.name == class_name)
    return next(f for f in cls.body if isinstance(f, ast.FunctionDef) and f.name == name)


def module_imports(package: Path = PACKAGE) -> dict[str, set[str]]:
    """For each module of the package, the package modules it imports."""
    modules = {p.stem for p in package.glob("*.py")}
    graph = {}
    for path in package.glob("*.py"):
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level == 1 and node.module:
                    imported.add(node.module.split(".")[0])
                elif node.level == 1:
                    imported.update(a.name for a in node.names)
                elif node.level == 0 and (node.module or "").startswith(package.name + "."):
                    imported.add(node.module.split(".")[1])
        graph[path.stem] = (imported & modules) - {path.stem}
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted: every import circle."""
    index, low, stack, on_stack, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph.get(node, ())):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(cycles)


def main() -> None:
    source = (PACKAGE / "pipeline_magic_remover.py").read_text()
    tree = ast.parse(source)
    call = method(tree, "MagicRemoverPipeline", "__call__")
    check = method(tree, "MagicRemoverPipeline", "check_inputs")
    arguments = check.args
    params = [a.arg for a in arguments.posonlyargs + arguments.args + arguments.kwonlyargs if a.arg != "self"]
    print(f"pipeline_magic_remover.py lines: {len(source.splitlines())}")
    print(f"__call__ lines of code (no docstring, blank or comment lines): {code_lines(source, call)}")
    print(f"__call__ parameters: {len(call.args.args) - 1}")
    print(f"check_inputs parameters: {len(params)} ({len(arguments.args) - 1} positional, "
          f"{len(arguments.kwonlyargs)} keyword-only)")  # fmt: skip
    cycles = import_cycles(module_imports())
    print(f"import cycles: {len(cycles)} {cycles}")


if __name__ == "__main__":
    main()
