"""rclpy stays in the ROS shell: only jepa_wm/nodes (and the demo CLI) may import it."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ALLOWED = {ROOT / "jepa_wm" / "cli" / "demo.py"}
ROS_PACKAGES = {"rclpy", "launch", "launch_ros"}


def _imports(path):
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module.split(".")[0]


def test_nothing_outside_nodes_imports_rclpy():
    offenders = []
    for path in sorted((ROOT / "jepa_wm").rglob("*.py")):
        if (ROOT / "jepa_wm" / "nodes") in path.parents or path in ALLOWED:
            continue
        bad = ROS_PACKAGES & set(_imports(path))
        if bad:
            offenders.append(f"{path.relative_to(ROOT)}: {sorted(bad)}")
    assert not offenders, "ROS imports outside jepa_wm/nodes: " + "; ".join(offenders)


def test_the_boundary_check_sees_the_nodes():
    nodes = sorted((ROOT / "jepa_wm" / "nodes").glob("*.py"))
    assert any("rclpy" in set(_imports(p)) for p in nodes)
