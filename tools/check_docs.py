#!/usr/bin/env python3
"""The offline half of dinof's docs pipeline: render processed notebooks to HTML without Quarto, and check the result.

`make docs-check` runs `nbdev_proc_nbs` (into `_proc/`), then `python tools/check_docs.py _proc`, which renders every
processed notebook to `_proc/html/NAME.html` with nbconvert (equations from Debian's libjs-mathjax when installed,
figures embedded so each page stands alone) and fails, one line per problem, when

- a processed notebook has no page,
- a figure of the index (a markdown image link, an `<img>` tag or an image output) is missing from its page or does not
  resolve to the file (or the output) it names,
- an exported symbol (a function or class in a module's `__all__`) has no `show_doc` output, with its name as the
  heading, in its processed notebook and on its page.

`tests/test_docs.py` uses the same functions on a freshly rendered index (and takes a Chromium screenshot of it).
"""
import base64, html.parser, importlib, inspect, json, re, sys, warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MATHJAX = Path('/usr/share/javascript/mathjax/MathJax.js')
_IMG_MD = re.compile(r'!\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)')
_IMG_TAG = re.compile(r'<img\b[^>]*\bsrc\s*=\s*["\']([^"\']+)["\']', re.I)
_IMAGE_MIMES = ('image/png', 'image/jpeg', 'image/svg+xml')


def _src(c): return ''.join(c['source']) if isinstance(c['source'], list) else c['source']


def render_html(nb_path, out_path, *, image_dir=None):
    "Render the notebook `nb_path` to the HTML file `out_path`, embedding the images its markdown links to."
    from nbconvert import HTMLExporter
    import nbformat
    nb_path, out_path = Path(nb_path), Path(out_path)
    exp = HTMLExporter(embed_images=True)
    if MATHJAX.exists(): exp.mathjax_url = f'file://{MATHJAX}?config=TeX-AMS_CHTML-full,Safe'
    with warnings.catch_warnings():  # nbdev's processed notebooks have cells without ids: nbformat warns, harmlessly
        warnings.simplefilter('ignore')
        nb = nbformat.read(nb_path, as_version=4)
        _title_block(nb)
        body, _ = exp.from_notebook_node(nb, resources={'metadata': {'path': str(image_dir or nb_path.parent)}})
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(body, encoding='utf-8')
    return out_path


def _title_block(nb):
    "Turn nbdev's frontmatter (a raw `---` cell, which Quarto reads and nbconvert would print) into a title and a lead."
    import nbformat, yaml
    for i, c in enumerate(nb.cells):
        if c.cell_type == 'raw' and c.source.startswith('---'):
            fm = yaml.safe_load(c.source.strip().strip('-')) or {}
            text = f"# {fm.get('title', '')}" + (f"\n\n> {fm['description']}" if fm.get('description') else '')
            nb.cells[i] = nbformat.v4.new_markdown_cell(text)
            return


class _Imgs(html.parser.HTMLParser):
    def __init__(self):
        super().__init__(); self.srcs = []
    def handle_starttag(self, tag, attrs):
        if tag == 'img': self.srcs.append(dict(attrs).get('src') or '')


def html_images(text):
    "The `src` of every `<img>` in the HTML `text`, in order."
    p = _Imgs(); p.feed(text); return p.srcs


def notebook_figures(nb):
    "The figures of a notebook (a dict from nbformat JSON): `('link', src)` for markdown images, `('output', mime, data)`."
    res = []
    for c in nb['cells']:
        if c['cell_type'] == 'markdown':
            s = _src(c)
            res += [('link', m) for m in _IMG_MD.findall(s) + _IMG_TAG.findall(s)]
        for o in c.get('outputs', []):
            for mime in _IMAGE_MIMES:
                if mime in o.get('data', {}): res.append(('output', mime, _src({'source': o['data'][mime]})))
    return res


def _data_uri_bytes(src):
    m = re.match(r'data:[\w/+.-]+;base64,(.*)', src, re.S)
    return base64.b64decode(m.group(1)) if m else None


def check_figures(nb_path, html_path, *, image_dir=None):
    "Problems (strings) with the figures of the notebook `nb_path` on its rendered page `html_path`; [] when all is well."
    nb = json.loads(Path(nb_path).read_text(encoding='utf-8'))
    page = Path(html_path).read_text(encoding='utf-8')
    srcs, base, problems = html_images(page), Path(image_dir or Path(nb_path).parent), []
    embedded = [b for b in map(_data_uri_bytes, srcs) if b is not None]
    for fig in notebook_figures(nb):
        if fig[0] == 'link':
            src = fig[1]
            if re.match(r'[a-z]+:', src): continue  # a web address: nothing to check offline
            f = base / src
            if not f.is_file(): problems.append(f'{nb_path}: image {src} does not exist'); continue
            ok = f.read_bytes() in embedded or any((Path(html_path).parent / s).resolve() == f.resolve() for s in srcs)
            if not ok: problems.append(f'{html_path}: image {src} of {Path(nb_path).name} is not on the page')
        else:
            _, mime, data = fig
            if mime == 'image/svg+xml':
                if data.strip()[:200] not in page: problems.append(f'{html_path}: an SVG output is not on the page')
            elif base64.b64decode(data) not in embedded:
                problems.append(f'{html_path}: an {mime} output of {Path(nb_path).name} is not on the page')
    return problems


def module_notebooks(nbs=ROOT / 'nbs'):
    "`{module: notebook}` for every notebook in `nbs` with a `#| default_exp`."
    res = {}
    for nb in sorted(Path(nbs).glob('[0-9]*.ipynb')):
        for c in json.loads(nb.read_text(encoding='utf-8'))['cells']:
            m = re.search(r'^#\|\s*default_exp\s+(\S+)', _src(c), re.M)
            if m: res[m.group(1)] = nb; break
    return res


def exported(module):
    "`(functions and classes, other names)` in the `__all__` of the module `dinof.<module>`."
    mod = importlib.import_module(f'dinof.{module}')
    objs = [(n, getattr(mod, n)) for n in mod.__all__]
    return ([n for n, o in objs if inspect.isfunction(o) or inspect.isclass(o)],
            [n for n, o in objs if not (inspect.isfunction(o) or inspect.isclass(o))])


def rendered_headings(proc_nb):
    "Names documented by `show_doc` outputs in a processed notebook (the `### name` heading of each)."
    nb = json.loads(Path(proc_nb).read_text(encoding='utf-8'))
    res = set()
    for c in nb['cells']:
        if c['cell_type'] != 'code' or 'show_doc(' not in _src(c): continue
        for o in c.get('outputs', []):
            md = _src({'source': o.get('data', {}).get('text/markdown', '')})
            res |= set(re.findall(r'^#{2,4} ([\w.]+)\s*$', md, re.M))
    return res


def check_proc(proc=ROOT / '_proc'):
    "Problems with the rendered docs in `proc` (processed notebooks and `html/`); [] when all is well."
    proc, problems = Path(proc), []
    nbs = sorted(p for p in proc.glob('*.ipynb') if re.match(r'[0-9]|index', p.name))
    if not nbs: return [f'{proc}: no processed notebooks (run nbdev_proc_nbs)']
    for nb in nbs:
        if not (proc / 'html' / f'{nb.stem}.html').is_file(): problems.append(f'{nb.name}: no page in {proc}/html')
    if (proc / 'index.ipynb').exists() and (proc / 'html/index.html').exists():
        problems += check_figures(proc / 'index.ipynb', proc / 'html/index.html')
    for module, nb in module_notebooks().items():
        pnb, page = proc / nb.name, proc / 'html' / f'{nb.stem}.html'
        if not pnb.exists() or not page.exists(): continue
        shown, text = rendered_headings(pnb), page.read_text(encoding='utf-8')
        for name in exported(module)[0]:
            if name not in shown: problems.append(f'{pnb}: no show_doc output for dinof.{module}.{name}')
            elif not re.search(rf'<h[2-4] id="{re.escape(name)}">', text):
                problems.append(f'{page}: no heading for dinof.{module}.{name}')
    return problems


def main(proc):
    proc = Path(proc)
    for nb in sorted(p for p in proc.glob('*.ipynb') if re.match(r'[0-9]|index', p.name)):
        render_html(nb, proc / 'html' / f'{nb.stem}.html')
    problems = check_proc(proc)
    for p in problems: print(p)
    n = len(list((proc / 'html').glob('*.html')))
    print(f'docs-check: {n} pages in {proc}/html, ' + (f'{len(problems)} problems' if problems else 'all figures and exported symbols present'))
    return 1 if problems else 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else ROOT / '_proc'))
