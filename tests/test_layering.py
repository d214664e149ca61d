"""Dependencies point one way (DESIGN.md): the domain and the settings
never import the transport, the media plane or the server."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

FORBIDDEN = {
    "rooms": {"aiortc", "aioice", "aiohttp", "socketio", "engineio", "redis", "av",
              "streaming", "signaling", "recorder"},
    "config": {"rooms", "signaling", "streaming", "recorder"},
}


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, top-level module) for every import in the file, including
    imports inside functions and under TYPE_CHECKING."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name.split(".")[0]) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "__import__" and node.args:
            first = node.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                found.append((node.lineno, first.value.split(".")[0]))
    return found


def violations(package: str) -> list[str]:
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for line, module in imported_modules(path):
            if module in FORBIDDEN[package]:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    return bad


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_forbidden_imports(package: str) -> None:
    assert (ROOT / package).is_dir()
    assert violations(package) == []


def test_the_check_can_fail(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("import aiohttp.web\nfrom redis.asyncio import Redis\n"
                      "def f():\n    from signaling import app\n    __import__('aiortc')\n")
    assert [m for _, m in imported_modules(sample)] == ["aiohttp", "redis", "signaling", "aiortc"]


# --- signaling translates; the media layer moves packets ----------------------------------

# streaming modules that move, parse or build packets (or own the peers and
# children that do): the web layer reaches media only through the plane's
# and the forum hosts' APIs (media_plane, media_bridge, forum_hosts, ...)
PACKET_LEVEL = {
    "aiortc_internals", "downtrack", "forum_media", "h264_sps", "ingest_check", "ingest_transcoder",
    "light_viewer", "playout", "program_bus", "program_encoder", "program_sink", "program_tee", "publisher",
    "restream_push", "rtcp_reports", "rtmp_codec", "rtp_count", "rtmp_gate", "rtp_codecs", "rtp_source",
    "rtp_udp_ingest", "rx_thread", "slate", "udp_mux", "ice_tcp", "stun_demux", "fanout_batch", "venue_ingest",
    "viewer", "viewer_rtcp", "wire_path",
}


def imported_names(path: Path) -> list[tuple[int, str, bool]]:
    """(line, dotted module, type-only) for every import of the file, at
    module level or inside functions; `from a import b` gives "a.b" (which
    resolves to the module a.b when there is one, else to a). Type-only:
    under `if TYPE_CHECKING:`, never executed."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    type_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for inner in node.body:
                type_only.update(id(n) for n in ast.walk(inner))
    found: list[tuple[int, str, bool]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name, id(node) in type_only) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.extend((node.lineno, f"{node.module}.{alias.name}", id(node) in type_only)
                         for alias in node.names)
    return found


OUR_PACKAGES = ("config", "rooms", "streaming", "recorder", "signaling", "bench")


def module_of(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def resolve(dotted: str, modules: set[str]) -> str | None:
    """The longest prefix of `dotted` that is one of our modules (not a
    package's __init__, which is empty)."""
    parts = dotted.split(".")
    for end in range(len(parts), 1, -1):
        name = ".".join(parts[:end])
        if name in modules:
            return name
    return None


def import_graph(root: Path, *, type_only: bool = False) -> dict[str, set[str]]:
    """module -> the modules of ours it imports (module and function level;
    TYPE_CHECKING imports too with `type_only`)."""
    paths = {module_of(root, p): p for package in OUR_PACKAGES if (root / package).is_dir()
             for p in sorted((root / package).rglob("*.py"))
             if "node_modules" not in p.parts}
    modules = {m for m, p in paths.items() if p.name != "__init__.py"}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module in modules:
        for _, dotted, only_types in imported_names(paths[module]):
            if only_types and not type_only:
                continue
            target = resolve(dotted, modules)
            if target is not None and target != module:
                graph[module].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module
    (Tarjan), each sorted: every import cycle is inside one of them."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(node: str) -> None:
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_signaling_imports_no_packet_level_module() -> None:
    assert all((ROOT / "streaming" / f"{name}.py").is_file() for name in PACKET_LEVEL), "the list names real modules"
    bad = []
    for path in sorted((ROOT / "signaling").rglob("*.py")):
        if "node_modules" in path.parts:
            continue
        for line, dotted, _ in imported_names(path):
            parts = dotted.split(".")
            if parts[0] == "streaming" and len(parts) > 1 and parts[1] in PACKET_LEVEL:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {dotted}")
    assert bad == []


def test_no_import_cycles_among_our_modules() -> None:
    graph = import_graph(ROOT)
    assert len(graph) > 100 and graph["signaling.app"], "the graph was read"
    assert cycles(graph) == []


def test_the_cycle_check_can_fail(tmp_path: Path) -> None:
    package = tmp_path / "rooms"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from rooms.b import x\n")
    (package / "b.py").write_text("def f():\n    from rooms import c\n")
    (package / "c.py").write_text("import rooms.a\n")
    (package / "d.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from rooms.a import y\n"
                                  "from rooms import a\n")
    (package / "e.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from rooms.f import y\n")
    (package / "f.py").write_text("from rooms.e import z\n")
    graph = import_graph(tmp_path)
    assert graph["rooms.b"] == {"rooms.c"} and graph["rooms.d"] == {"rooms.a"}
    assert cycles(graph) == [["rooms.a", "rooms.b", "rooms.c"]]  # a function-level import closes it
    assert cycles(import_graph(tmp_path, type_only=True)) == [["rooms.a", "rooms.b", "rooms.c"],
                                                               ["rooms.e", "rooms.f"]]
