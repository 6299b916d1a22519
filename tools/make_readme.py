#!/usr/bin/env python3
"""Write README.md from nbs/index.ipynb without Quarto (which `nbdev_readme` needs and this machine lacks).

Markdown cells are copied; code cells (minus `#|` directives, and skipping `#| hide` cells) become fenced Python,
followed by their text outputs. `make readme` runs this; `make check-sync` fails when README.md is stale.
"""
import json, pathlib, re, sys

def cell_text(src): return ''.join(src) if isinstance(src, list) else src

def render(nb) -> str:
    parts = []
    for c in nb['cells']:
        src = cell_text(c['source'])
        lines = src.split('\n')
        directives = [l.strip()[2:].strip() for l in lines if l.strip().startswith('#|')]
        if any(d.startswith('hide') or d.startswith('default_exp') for d in directives): continue
        if c['cell_type'] == 'markdown':   # relative image links point into nbs/ from the repository's root
            parts.append(re.sub(r'(!\[[^\]]*\]\()(?![a-z]+:|/)', r'\1nbs/', src.strip('\n'))); continue
        code = '\n'.join(l for l in lines if not l.strip().startswith('#|')).strip('\n')
        if not code: continue
        parts.append(f'```python\n{code}\n```')
        texts = []
        for o in c.get('outputs', []):
            if o.get('output_type') == 'stream': texts.append(cell_text(o['text']))
            elif 'text/plain' in o.get('data', {}) and 'image/png' not in o.get('data', {}):
                texts.append(cell_text(o['data']['text/plain']))
        if texts: parts.append('```\n' + ''.join(texts).rstrip('\n') + '\n```')
    return '\n\n'.join(parts) + '\n'

if __name__ == '__main__':
    root = pathlib.Path(__file__).resolve().parent.parent
    nb = json.loads((root / 'nbs' / 'index.ipynb').read_text(encoding='utf-8'))
    out = render(nb)
    header = '<!-- generated from nbs/index.ipynb by `make readme`: edit the notebook, not this file -->\n\n'
    (root / 'README.md').write_text(header + out, encoding='utf-8')
    sys.exit(0)
