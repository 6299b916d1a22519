"""Packaging facts the README states: the Python floor, and what a new user needs to know to run the notebooks."""
import ast, configparser, pathlib, re

ROOT = pathlib.Path(__file__).resolve().parents[1]

def _min_python():
    cfg = configparser.ConfigParser(); cfg.read(ROOT / 'settings.ini')
    return tuple(int(v) for v in cfg['DEFAULT']['min_python'].split('.'))

def _pep604_annotations():
    "Annotations written `X | Y` in dinof/, which `typing.get_type_hints` (used by dinof.config) evaluates at run time."
    found = []
    for path in sorted((ROOT / 'dinof').glob('*.py')):
        for node in ast.walk(ast.parse(path.read_text())):
            ann = getattr(node, 'annotation', None)
            if isinstance(ann, ast.BinOp) and isinstance(ann.op, ast.BitOr): found.append(f'{path.name}:{node.lineno}')
    return found

def test_min_python_covers_the_annotations():
    # `str | None` in a dataclass field fails in typing.get_type_hints before Python 3.10
    assert _pep604_annotations(), 'no PEP 604 annotations left: the 3.10 floor may be lowered again'
    assert _min_python() >= (3, 10), f'settings.ini says Python {_min_python()}, but {_pep604_annotations()[:3]} need 3.10'

def test_readme_states_the_floor_and_root_jupyter():
    readme = (ROOT / 'README.md').read_text()
    assert re.search(r'Python 3\.10\+', readme), 'README must state Python 3.10+'
    assert '--allow-root' in readme, 'README must say that JupyterLab needs --allow-root as root'
    assert 'libjs-mathjax' in readme, 'README must say how equations render offline'
