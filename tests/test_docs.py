"""The documentation: every exported symbol documented, the sidebar in the paper's order, one Quarto config, and the
rendered index (figures present, and a headless Chromium screenshot that shows the sample grid)."""
import json, inspect, os, re, shutil, subprocess, sys, textwrap
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
NBS = ROOT / 'nbs'
sys.path.insert(0, str(ROOT / 'tools'))
import check_docs  # noqa: E402

MODULES = check_docs.module_notebooks(NBS)
# the paper's order: method (SDE, flow prior, score network), training (data, losses), sampling and evaluation,
# then the machinery that runs it; experiments after that
PAPER_ORDER = ['sde', 'flow', 'nets', 'data', 'losses', 'sampling', 'likelihood', 'metrics', 'config', 'train', 'cli']


def _src(c): return ''.join(c['source']) if isinstance(c['source'], list) else c['source']


def test_modules_found():
    assert set(PAPER_ORDER) <= set(MODULES), set(PAPER_ORDER) - set(MODULES)


# --- docstrings and show_doc ---------------------------------------------------------------------------------------

def _own_doc(cls, name):
    "The docstring `cls.name` shows: its own, or that of the dinof class it overrides (not torch's or object's)."
    for k in cls.__mro__:
        if name not in k.__dict__: continue
        v = k.__dict__[name]
        f = v.fget if isinstance(v, property) else getattr(v, '__func__', v)
        if (getattr(f, '__doc__', None) or '').strip(): return k.__module__.startswith('dinof')
    return False


@pytest.mark.parametrize('module', sorted(MODULES))
def test_exported_symbols_have_docstrings(module):
    "Every function and class in `__all__` has its own docstring; so does every public method of those classes."
    mod = __import__(f'dinof.{module}', fromlist=['_'])
    missing = []
    for name in check_docs.exported(module)[0]:
        o = getattr(mod, name)
        doc = o.__dict__.get('__doc__') if inspect.isclass(o) else o.__doc__
        if not (doc or '').strip(): missing.append(name)
        if not inspect.isclass(o) or not o.__module__.startswith('dinof'): continue
        methods = {k for c in o.__mro__ if c.__module__.startswith('dinof') for k, v in vars(c).items()   # with those
                   if not k.startswith('_') and (inspect.isfunction(v) or isinstance(v, (property, staticmethod, classmethod)))}
        missing += [f'{name}.{k}' for k in sorted(methods) if not _own_doc(o, k)]  # of private dinof bases
    assert not missing, f'dinof.{module}: no docstring for {missing}'


def _show_doc_names(nb_path):
    "Names nbdev will document in `nb_path`: explicit `show_doc(...)` cells plus those its `add_show_docs` adds."
    from nbdev.process import NBProcessor
    from nbdev.processors import add_show_docs
    p = NBProcessor(nb_path, procs=[add_show_docs])
    p.process()
    return {m for c in p.nb.cells if c.cell_type == 'code' for m in re.findall(r'^show_doc\(([\w.]+)', c.source, re.M)}


@pytest.mark.parametrize('module', sorted(MODULES))
def test_exported_symbols_have_show_doc(module):
    """Each exported function and class gets a `show_doc` in its notebook. An exported constant has no docstring: it is
    named in the notebook's prose or carries a comment where it is defined (exported code shows on the docs page)."""
    nb = MODULES[module]
    fns, consts = check_docs.exported(module)
    shown = _show_doc_names(nb)
    assert not [n for n in fns if n not in shown], f'{nb.name}: no show_doc for {[n for n in fns if n not in shown]}'
    cells = json.loads(nb.read_text())['cells']
    prose = '\n'.join(_src(c) for c in cells if c['cell_type'] == 'markdown')
    code = '\n'.join(_src(c) for c in cells if c['cell_type'] == 'code' and re.search(r'^#\|\s*exports?\b', _src(c), re.M))
    def _told(n):
        return re.search(rf'\b{n}\b', prose) or re.search(rf'^{n}\s*(?::[^=\n]*)?=.*#', code, re.M) \
            or re.search(rf'^#.*\n(?:\w+\s*(?::[^=\n]*)?=.*\n)*{n}\s*(?::[^=\n]*)?=', code, re.M)
    untold = [n for n in consts if not _told(n)]
    assert not untold, f'{nb.name}: constants neither named in the prose nor commented where defined: {untold}'


def test_show_doc_checker_catches_a_hidden_export(tmp_path):
    "The show_doc check is not vacuous: a class exported from a `#| hide` cell gets no automatic show_doc."
    nb = {'cells': [{'cell_type': 'code', 'execution_count': None, 'id': 'a', 'metadata': {}, 'outputs': [],
                     'source': '#| export\ndef shown(x):\n    "Doc."\n    return x'},
                    {'cell_type': 'code', 'execution_count': None, 'id': 'b', 'metadata': {}, 'outputs': [],
                     'source': '#| export\n#| hide\nclass Hidden:\n    "Doc."'}],
          'metadata': {}, 'nbformat': 4, 'nbformat_minor': 5}
    (tmp_path / 'x.ipynb').write_text(json.dumps(nb))
    assert _show_doc_names(tmp_path / 'x.ipynb') == {'shown'}


# --- sidebar and Quarto config -------------------------------------------------------------------------------------

def _sidebar():
    return yaml.safe_load((NBS / 'sidebar.yml').read_text())['website']['sidebar']['contents']


def _flat(items):
    for it in items:
        if isinstance(it, dict):
            yield from _flat(it.get('contents', []))
            if 'href' in it: yield it['href']
        else: yield it


def test_sidebar_lists_every_notebook_once_in_the_papers_order():
    entries = list(_flat(_sidebar()))
    notebooks = sorted(p.name for p in NBS.glob('*.ipynb') if not p.name.startswith('_'))
    assert sorted(entries) == notebooks, f'sidebar.yml vs nbs/: missing {set(notebooks) - set(entries)}, ' \
                                         f'stale {set(entries) - set(notebooks)}'
    assert entries[0] == 'index.ipynb'
    mods = {nb.name: m for m, nb in MODULES.items()}
    lib = [mods[e] for e in entries if e in mods and mods[e] in PAPER_ORDER]
    assert lib == PAPER_ORDER, lib
    # the experiments (notebooks numbered 12 and up) follow the CLI, each under a section heading
    cli_at = entries.index(MODULES['cli'].name)
    assert all(entries.index(e) > cli_at for e in entries if re.match(r'(1[2-9]|[2-9]\d)_', e))
    assert all('section' in s for s in _sidebar() if isinstance(s, dict))


def test_nbs_quarto_yml_is_the_top_level_file():
    link = NBS / '_quarto.yml'
    assert link.is_symlink() and link.resolve() == (ROOT / '_quarto.yml').resolve(), \
        'nbs/_quarto.yml must be a symbolic link to ../_quarto.yml'
    cfg = yaml.safe_load(link.read_text())
    assert cfg['project']['type'] == 'website' and cfg['metadata-files'] == ['nbdev.yml', 'sidebar.yml']
    assert (NBS / cfg['format']['html']['css']).is_file()


def test_nbdev_keeps_the_config_and_the_sidebar(tmp_path):
    """In a copy of the project, nbdev's own docs set-up (`refresh_quarto_yml`, `nbdev_sidebar`, `proc_nbs`: what
    `nbdev_docs` runs before `quarto render`) keeps the link and the hand-written sidebar, regenerates `nbdev.yml`
    from settings.ini, and stages the top-level `_quarto.yml` in `_proc/`; a sidebar entry whose notebook does not
    exist yet does not stop it."""
    for f in ('settings.ini', '_quarto.yml'): shutil.copy(ROOT / f, tmp_path / f)
    nbs = tmp_path / 'nbs'; nbs.mkdir()
    (nbs / '_quarto.yml').symlink_to('../_quarto.yml')
    for f in ('sidebar.yml', 'styles.css'): shutil.copy(NBS / f, nbs / f)
    nb = {'cells': [{'cell_type': 'markdown', 'id': 'a', 'metadata': {}, 'source': '# Index\n\nText.'}],
          'metadata': {}, 'nbformat': 4, 'nbformat_minor': 5}
    (nbs / 'index.ipynb').write_text(json.dumps(nb))
    code = textwrap.dedent('''
        from nbdev.quarto import refresh_quarto_yml, nbdev_sidebar
        from nbdev.serve import proc_nbs
        refresh_quarto_yml(); nbdev_sidebar.__wrapped__(); proc_nbs(n_workers=0)
    ''')
    r = subprocess.run([sys.executable, '-c', code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (nbs / '_quarto.yml').is_symlink()
    assert (tmp_path / '_quarto.yml').read_text() == (ROOT / '_quarto.yml').read_text()
    assert (nbs / 'sidebar.yml').read_text() == (NBS / 'sidebar.yml').read_text()
    assert 'title: "dinof"' in (nbs / 'nbdev.yml').read_text()
    proc = tmp_path / '_proc'
    assert (proc / '_quarto.yml').read_text() == (ROOT / '_quarto.yml').read_text()
    assert not (proc / '_quarto.yml').is_symlink() and (proc / 'sidebar.yml').is_file() and (proc / 'index.ipynb').is_file()
    missing = [e for e in _flat(_sidebar()) if not (nbs / e).exists()]
    assert missing  # the copy holds only the index: the other sidebar entries are missing, and nothing failed


# --- the rendered index --------------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def rendered_index(tmp_path_factory):
    "nbs/index.ipynb through nbdev's processors, rendered to HTML as `make docs-check` renders it."
    from execnb.nbio import read_nb, write_nb
    from nbdev.processors import FilterDefaults
    d = tmp_path_factory.mktemp('index')
    nb = read_nb(NBS / 'index.ipynb')
    FilterDefaults()(nb)
    write_nb(nb, d / 'index.ipynb')
    return d / 'index.ipynb', check_docs.render_html(d / 'index.ipynb', d / 'html' / 'index.html', image_dir=NBS)


def _grid_src():
    "The sample grid's image link in the index (the first markdown image whose file name says samples)."
    nb = json.loads((NBS / 'index.ipynb').read_text())
    links = [f[1] for f in check_docs.notebook_figures(nb) if f[0] == 'link' and 'sample' in f[1]]
    assert links, 'index.ipynb shows no sample grid'
    return links[0]


def test_every_figure_of_the_index_is_on_its_page(rendered_index):
    nb, page = rendered_index
    assert check_docs.notebook_figures(json.loads(nb.read_text()))
    assert check_docs.check_figures(nb, page, image_dir=NBS) == []


def test_figure_check_catches_an_unresolved_image(rendered_index, tmp_path):
    "A page rendered without embedding (the old docs-check: HTML in _proc/html/, images in _proc/images/) fails."
    from nbconvert import HTMLExporter
    import nbformat, warnings
    nb, _ = rendered_index
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        body, _ = HTMLExporter().from_notebook_node(nbformat.read(nb, as_version=4))
    (tmp_path / 'html').mkdir(); (tmp_path / 'html/index.html').write_text(body)
    problems = check_docs.check_figures(nb, tmp_path / 'html/index.html', image_dir=NBS)
    assert any(_grid_src() in p and 'not on the page' in p for p in problems), problems


def _read_png(p):
    import matplotlib.image as mi
    return mi.imread(p)[..., :3].astype('float64')


def _locate(screen, tmpl):
    "Top-left corner of `tmpl` in `screen` (grey levels) by least squares over every position, and the mean error."
    import numpy as np
    from scipy.signal import fftconvolve
    S, T = screen.mean(-1), tmpl.mean(-1)
    h, w = T.shape
    corr = fftconvolve(S, T[::-1, ::-1], mode='valid')
    I = np.pad((S ** 2).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    s2 = I[h:, w:] - I[:-h, w:] - I[h:, :-w] + I[:-h, :-w]
    y, x = np.unravel_index(np.argmin(s2 - 2 * corr), corr.shape)
    return (int(y), int(x)), float(np.abs(S[y:y + h, x:x + w] - T).mean())


WINDOW = (1280, 6000)  # width, height: the whole index down past the sample grid


def test_chromium_screenshot_of_the_index_shows_the_sample_grid(rendered_index, tmp_path):
    chromium = shutil.which('chromium')
    if chromium is None: pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    _, page = rendered_index
    shot = tmp_path / 'index.png'
    cmd = [chromium, '--headless', '--no-sandbox', '--disable-gpu', '--hide-scrollbars', '--force-device-scale-factor=1',
           f'--user-data-dir={tmp_path / "profile"}', '--virtual-time-budget=3000', f'--screenshot={shot}',
           f'--window-size={WINDOW[0]},{WINDOW[1]}', page.as_uri()]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert shot.is_file(), r.stderr[-2000:]
    if os.environ.get('DINOF_DOCS_SCREENSHOT'): shutil.copy(shot, os.environ['DINOF_DOCS_SCREENSHOT'])
    S = _read_png(shot)
    assert S.shape[:2] == (WINDOW[1], WINDOW[0])
    assert (S.mean(-1) < 0.9).mean() > 0.01 and S.std() > 0.05  # not blank: text and figures on white
    grid = _read_png(NBS / _grid_src())
    (y, x), err = _locate(S, grid)
    assert err < 0.02, f'the sample grid is not in the screenshot (best match {err:.3f} at {(y, x)})'
    region = S[y:y + grid.shape[0], x:x + grid.shape[1]]
    assert region.std() > 0.1  # the grid itself, not a uniform patch


# --- the front page's evidence ---------------------------------------------------------------------------------------

def test_front_page_evidence_is_the_committed_results():
    "The study's table and summary in index.ipynb (and README.md) are those `make bench-report` makes from results.json, which holds every committed cell."
    import bench_report
    from dinof.bench import summarize
    bench = ROOT / 'bench' / 'fashion_mnist'
    saved = json.loads((bench / 'results.json').read_text())
    now = summarize(bench)
    assert now['points'] == saved['points'] and now['bpd'] == saved['bpd'] and now['fits'] == saved['fits'], \
        'bench/fashion_mnist/results.json is stale: run `make bench-report`'
    want = bench_report.block(saved)
    cell = [_src(c) for c in json.loads((NBS / 'index.ipynb').read_text())['cells'] if bench_report.START in _src(c)]
    assert len(cell) == 1 and want in cell[0], 'nbs/index.ipynb: the study block differs from results.json: run `make bench-report`'
    assert want in (ROOT / 'README.md').read_text()
    assert '| pc (uniform) | baseline (Gaussian at T) |' in want and 'DiNof has the lower FID in' in want


def test_the_hand_written_conclusion_quotes_the_stored_results():
    "The README's conclusion under the study's table, 'Where the gain comes from' and 'How much of 53.7 is luck' are typed by hand: each figure must match the committed JSON."
    from dinof.bench import results_summary
    bench = ROOT / 'bench' / 'fashion_mnist'
    readme = (ROOT / 'README.md').read_text()
    res = json.loads((bench / 'results.json').read_text())
    says = ' '.join(readme[readme.index('<!-- bench:end -->'):readme.index('### What a prior at')].split())
    assert 'at the paper\'s setting the two are within the noise' in says and 'neither is ahead beyond the noise' in results_summary(res)
    para = ' '.join(readme[readme.index('**Where the gain comes from.**'):readme.index('<!-- fact:ladder-nets -->')].split())
    fid = {(p['model'], p['setting'], p['method'], p['schedule']): p['fid'] for p in res['points']
           if p['seed'] == 0 and (p['nfe'] == 19 or (p['method'] == 'pc' and p['nfe'] == 50 and p['setting'] == 'pc_none'))}
    g = lambda m, me, sch='logsnr', st='grid': f"{fid[m, st, me, sch]:.1f}"
    quoted = [f"DiNof's FID is {g('dinof', 'dpm2')} against the baseline's {g('baseline', 'dpm2')}",
              f"with Heun {g('dinof', 'heun')} against {g('baseline', 'heun')}",
              f"{g('dinof', 'pc', 'uniform', 'pc_none')} against {g('baseline', 'pc', 'uniform', 'pc_none')}",
              ', '.join(f"{t}: {'**' * (t == '0.8')}{g(f'flow_tm{t}', 'dpm2')}{'**' * (t == '0.8')}" for t in ('0.2', '0.4', '0.6', '0.8'))]
    for q in quoted: assert q in para, (q, para)
    sweep = {r['name']: r['fid'] for r in json.loads((ROOT / 'bench' / 'quickstart' / 'sweep.json').read_text())['rows']}
    seeds = [sweep[k] for k in ('base', 'seed1', 'seed2', 'seed3', 'seed4')]
    import statistics
    assert f'scores {statistics.mean(seeds):.1f} ± {statistics.stdev(seeds):.1f} ({min(seeds):.1f} to {max(seeds):.1f};' in ' '.join(readme.split())


def test_bench_report_replaces_only_its_block():
    import bench_report
    text = f'before\n{bench_report.START}\nold table\n{bench_report.END}\nafter'
    assert bench_report.replace_block(text, 'NEW') == 'before\nNEW\nafter'
    with pytest.raises(SystemExit, match='no <!-- bench:start -->'): bench_report.replace_block('no markers', 'NEW')
