"""The package's shape: imports run one way, analysis stays light."""

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "cpac_jax"


def _module(path: Path) -> str:
  parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports():
  """{module: {(imported module, name or None)}} within cpac_jax."""
  found = {}
  for path in PACKAGE.rglob("*.py"):
    module, names = _module(path), set()
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
          "cpac_jax"):
        names |= {(node.module, alias.name) for alias in node.names}
      elif isinstance(node, ast.Import):
        names |= {(alias.name, None) for alias in node.names
                  if alias.name.startswith("cpac_jax")}
    found[module] = names
  return found


def test_imports_between_modules_have_no_cycle():
  modules = _imports()
  graph = {}
  for module, names in modules.items():
    targets = set()
    for target, name in names:
      full = f"{target}.{name}" if name else target
      target = full if full in modules else target
      if target != module and not module.startswith(target + "."):
        targets.add(target)  # a package importing its own parts is fine
    graph[module] = targets
  visiting, done = [], set()

  def visit(module):
    assert module not in visiting, " -> ".join(visiting + [module])
    if module in done:
      return
    visiting.append(module)
    for target in graph.get(module, ()):
      visit(target)
    visiting.pop()
    done.add(module)

  for module in graph:
    visit(module)


def test_no_module_imports_another_packages_private_names():
  for module, names in _imports().items():
    for target, name in names:
      if name and name.startswith("_"):
        # private parts of one's own package only
        assert module.rsplit(".", 1)[0] == target, (module, target, name)


@pytest.mark.slow
def test_interpret_analysis_loads_no_checkpointing_or_training():
  result = subprocess.run(
      [sys.executable, "-c",
       "import sys, cpac_jax.interpret\n"
       "print(sorted({m.split('.')[0] for m in sys.modules} & {'orbax'}),"
       " 'cpac_jax.train' in sys.modules)"],
      capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.split() == ["[]", "False"]


def test_the_library_reads_no_file_of_the_checkout_around_it():
  """No module finds configs/ or experiments/ through its own path: a
  config the library needs is the installed `configs` package's module,
  and results are read from the folders callers name."""
  for path in PACKAGE.rglob("*.py"):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
      if isinstance(node, ast.Attribute) and node.attr in ("parents",
                                                           "parent"):
        assert "__file__" not in ast.unparse(node), (
            f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: "
            f"{ast.unparse(node)}")


def test_nothing_in_the_library_imports_the_benchmarks():
  for module, names in _imports().items():
    if not module.startswith("cpac_jax.benchmarks"):
      assert not any(target.startswith("cpac_jax.benchmarks")
                     or (target, name) == ("cpac_jax", "benchmarks")
                     for target, name in names), module


def _public(owner, name: str) -> bool:
  return name in getattr(owner, "__all__", ())


def test_benchmarks_use_public_names_only():
  """What a benchmark takes from cpac_jax is in the `__all__` of where it
  takes it from: `from cpac_jax.X import name`, and each step of a
  `cj.a.b` chain, as a user's code would."""
  import importlib

  import cpac_jax
  for path in (PACKAGE / "benchmarks").glob("*.py"):
    where = path.relative_to(PACKAGE.parent)
    for node in ast.walk(ast.parse(path.read_text())):
      if (isinstance(node, ast.ImportFrom) and node.module
          and node.module.startswith("cpac_jax")
          and not node.module.startswith("cpac_jax.benchmarks")):
        owner = importlib.import_module(node.module)
        for alias in node.names:
          assert _public(owner, alias.name), (
              f"{where}:{node.lineno}: {node.module}.{alias.name}")
      elif isinstance(node, ast.Attribute):
        chain = []
        while isinstance(node, ast.Attribute):
          chain.insert(0, node.attr)
          node = node.value
        if isinstance(node, ast.Name) and node.id == "cj":
          owner = cpac_jax
          for name in chain:
            if not isinstance(owner, type(cpac_jax)):
              break  # past the modules: a class's own attributes
            assert _public(owner, name), (
                f"{where}:{node.lineno}: cj.{'.'.join(chain)}")
            owner = getattr(owner, name)


@pytest.mark.slow  # a process importing everything
def test_every_module_imports_beside_every_other():
  """pytest's doctest collection imports every module into one process (which
  ones share a worker varies from run to run): two modules defining the same
  absl flag at import fail it. Command-line modules define theirs in main."""
  modules = sorted(_module(path) for path in PACKAGE.rglob("*.py")
                   if path.name != "__main__.py")
  if importlib.util.find_spec("torch") is None:  # the peers: [bench]
    modules.remove("cpac_jax.benchmarks.torch_models")
  code = ("import importlib\n"
          f"for m in {modules!r}:\n  importlib.import_module(m)")
  result = subprocess.run([sys.executable, "-c", code], capture_output=True,
                          text=True, cwd=PACKAGE.parent, check=False)
  assert result.returncode == 0, result.stderr[-2000:]
