"""The package's import graph has no circle, and the bridge's public names stay where they were."""

import ast
import pathlib

import jrmsprop

ROOT = pathlib.Path(jrmsprop.__file__).parent


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """Module -> the jrmsprop modules it imports (at any depth of its code)."""
    modules = {_module_name(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            found |= {t for t in targets if t in modules and t != name}
        graph[name] = found
    return graph


def test_no_module_imports_itself_through_others():
    graph = _imports()

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for nxt in graph[start]:
            if nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt})):
                return True
        return False

    # A package's __init__ importing its own submodules is how a package shows its
    # face; a circle is a submodule (or another module) importing back.
    def is_face(a: str, b: str) -> bool:
        return b.startswith(a + ".")

    circles = sorted(
        (a, b)
        for a in graph
        for b in graph[a]
        if not is_face(a, b) and reaches(b, a, {b}) and not is_face(b, a)
    )
    assert circles == []


def test_bridge_names_importable_as_before():
    from jrmsprop.interop import (  # noqa: F401
        from_torch,
        from_torch_state_dict,
        from_torch_state_dicts,
        state_dict_tensors,
        to_torch,
        to_torch_state_dict,
    )
    from jrmsprop.schedules import from_torch_scheduler  # noqa: F401

    assert jrmsprop.from_torch_state_dict is jrmsprop.interop.from_torch_state_dict
