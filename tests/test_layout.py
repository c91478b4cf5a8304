"""The layout the README's "Layout" section describes, held by the code itself.

Layers import downward only: models and diffusion -> tools.files -> tools.video -> tools.config ->
tools.recon / tools.training / tools.evaluation (only recon -> evaluation crosses, for --eval and the in-loop
metrics) -> tools.bench -> the command lines. No library module imports a command line; a function-local
import is kept for optional dependencies only; files and functions stay readable in one sitting.
"""
import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CLIS = {'recon', 'train_vae', 'tools.eval', 'tools.report', 'tools.cache_latents', 'tools.benchmark',
        'tools.check_weights'}
LOWER = {                                  # layer -> the project layers it may import (besides itself)
    'diffusion': set(),
    'models': {'diffusion'},
    'tools.files': set(),
    'tools.video': {'models', 'diffusion', 'tools.files'},
    'tools.config': {'models', 'diffusion', 'tools.files', 'tools.video'},
}
BASE = {'models', 'diffusion', 'tools.files', 'tools.video', 'tools.config'}
LOWER.update({'tools.recon': BASE | {'tools.evaluation'}, 'tools.training': BASE, 'tools.evaluation': BASE,
              'tools.bench': BASE | {'tools.recon', 'tools.training', 'tools.evaluation'}})
OPTIONAL = {'lpips', 'xformers', 'resource', 'ctypes', 'torch._dynamo', 'matplotlib'}   # imported where first needed
MAX_FILE_LINES, MAX_CLI_LINES, MAX_FUNCTION_LINES = 420, 160, 65


def modules():
    """{dotted module name: path} of every shipped Python file (not tests, not configs)."""
    found = {}
    for path in sorted(REPO.rglob('*.py')):
        rel = path.relative_to(REPO)
        if rel.parts[0] in ('tests', 'configs', '.venv') or rel.parts[0].startswith('.'):
            continue
        name = '.'.join(rel.with_suffix('').parts).removesuffix('.__init__')
        found[name] = path
    return found


def layer(name):
    for key in sorted(LOWER, key=len, reverse=True):
        if name == key or name.startswith(key + '.'):
            return key
    return None


def is_main_guard(node):
    return (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
            and isinstance(node.test.left, ast.Name) and node.test.left.id == '__name__')


def imports(tree, project):
    """[(imported module, line, inside a function)] of a module, `if __name__ == '__main__':` blocks left out."""
    out = []

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            if is_main_guard(child):
                continue
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import):
                out.extend((a.name, child.lineno, inner) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                for a in child.names:         # `from tools import eval` imports the module tools.eval
                    sub = f'{child.module}.{a.name}'
                    out.append((sub if sub in project else child.module, child.lineno, inner))
            visit(child, inner)
    visit(tree, False)
    return list(dict.fromkeys(out))


def project_module(name, project):
    while name and name not in project:
        name = name.rpartition('.')[0]
    return name or None


@pytest.fixture(scope='module')
def parsed():
    return {name: (path, ast.parse(path.read_text())) for name, path in modules().items()}


def test_layers_import_downward_and_no_library_imports_a_cli(parsed):
    bad = []
    for name, (path, tree) in parsed.items():
        own = layer(name)
        for target, line, _ in imports(tree, parsed):
            dep = project_module(target, parsed)
            if dep is None or dep == name:
                continue
            where = f'{path.relative_to(REPO)}:{line} imports {dep}'
            if dep in CLIS and name not in CLIS:
                bad.append(f'{where} (a command line)')
            elif own is not None and layer(dep) not in LOWER[own] | {own}:
                bad.append(f'{where} (layer {layer(dep)} is not below {own})')
    assert not bad, '\n'.join(bad)


def test_every_shipped_module_has_a_layer_or_is_a_cli(parsed):
    stray = [n for n in parsed if layer(n) is None and n not in CLIS and n != 'tools']
    assert not stray, f'modules outside the layout: {stray}'


def test_function_local_imports_only_for_optional_dependencies(parsed):
    local = []
    for name, (path, tree) in parsed.items():
        for target, line, inner in imports(tree, parsed):
            if inner and not any(target == o or target.startswith(o + '.') for o in OPTIONAL):
                local.append(f'{path.relative_to(REPO)}:{line} imports {target} inside a function')
    assert not local, '\n'.join(local)


def test_files_and_functions_read_in_one_sitting(parsed):
    long = []
    for name, (path, tree) in parsed.items():
        limit = MAX_CLI_LINES if name in CLIS else MAX_FILE_LINES
        lines = len(path.read_text().splitlines())
        if lines > limit:
            long.append(f'{path.relative_to(REPO)}: {lines} lines (at most {limit})')
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f'{path.relative_to(REPO)}:{node.lineno} {node.name}: {n} lines '
                                f'(at most {MAX_FUNCTION_LINES})')
    assert not long, '\n'.join(long)


def test_the_checks_see_a_violation(tmp_path):
    """The graph walk finds a function-local, an upward and a CLI import in a made-up module."""
    tree = ast.parse('import models.dit\ndef f():\n    from tools.recon import batch\n    import recon\n'
                     "if __name__ == '__main__':\n    import train_vae\n")
    project = {'models.dit', 'tools.recon.batch', 'recon', 'train_vae'}
    found = imports(tree, project)
    assert found == [('models.dit', 1, False), ('tools.recon.batch', 3, True), ('recon', 4, True)]
    assert layer('tools.recon.batch') == 'tools.recon' and 'tools.recon' not in LOWER['tools.video']
