"""The layering the code keeps: no import loops, data below the model, the library below the app."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = "cir_core"
# What the datasets may not reach, directly or through another module: a dataset is read,
# served and generated without a model, a trainer or an engine.
ABOVE_DATA = ("cir_core.model", "cir_core.train", "cir_core.train_config", "cir_core.engine", "cir_core.checkpoints")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking_block(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        isinstance(test, ast.Name) and test.id == "TYPE_CHECKING"
        or isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """Modules of `known` that the file imports anywhere (inside functions too), but for
    `if TYPE_CHECKING:` blocks, which never run."""
    tree = ast.parse(path.read_text())
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if _is_type_checking_block(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            names = []
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def import_graph(folder: str) -> dict[str, set[str]]:
    files = sorted((ROOT / folder).rglob("*.py"))
    known = {module_name(path) for path in files}
    return {module_name(path): imported_modules(path, known) - {module_name(path)} for path in files}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import loop as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state:
                cycle = walk(target)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            cycle = walk(start)
            if cycle:
                return cycle
    return None


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        node = todo.pop()
        for target in graph.get(node, ()):
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def test_the_cycle_finder_finds_a_loop_and_passes_a_tree():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_library_has_no_import_loop():
    assert find_cycle(import_graph(LIBRARY)) is None


def test_datasets_reach_no_model_trainer_or_engine():
    graph = import_graph(LIBRARY)
    offenders = {module: sorted(reachable(graph, module) & set(ABOVE_DATA))
                 for module in graph if module.startswith("cir_core.data")}
    assert {module: above for module, above in offenders.items() if above} == {}


@pytest.mark.parametrize("forbidden", ["gradio", "demo"])
def test_the_library_never_imports_the_app(forbidden):
    files = sorted((ROOT / LIBRARY).rglob("*.py"))
    offenders = [path.name for path in files if forbidden in imported_modules(path, {forbidden})]
    assert offenders == []
