#!/usr/bin/env bash
# Builds the book (docs/) with the pinned mdbook and fails on a broken internal link: a relative
# link in the book's chapters or the README must name a file that exists and, with #anchor, a
# heading of that file (anchors as mdbook makes them from headings).
set -euo pipefail
cd "$(dirname "$0")/.."
mdbook build docs >/dev/null
python3 - <<'PY'
import os, re, sys

def slug(heading):
    # mdbook's id: lowercase, keep alphanumerics, '-' and '_', spaces become '-', drop the rest.
    text = re.sub(r'`|\*|\[|\]\([^)]*\)', '', heading).strip().lower()
    return ''.join(c if c.isalnum() or c in '-_' else '-' if c == ' ' else '' for c in text)

def anchors(path):
    out, fence = set(), False
    for line in open(path, encoding='utf-8'):
        if line.startswith('```'):
            fence = not fence
        elif not fence and line.startswith('#'):
            out.add(slug(line.lstrip('#')))
    return out

files = ['README.md'] + [os.path.join(d, f) for d, _, fs in os.walk('docs/src') for f in fs if f.endswith('.md')]
broken = []
link = re.compile(r'\]\(([^)\s]+)\)')
for path in files:
    fence = False
    for number, line in enumerate(open(path, encoding='utf-8'), 1):
        if line.startswith('```'):
            fence = not fence
            continue
        if fence:
            continue
        for target in link.findall(line):
            if re.match(r'^[a-z]+:', target):
                continue
            file_part, _, anchor = target.partition('#')
            resolved = os.path.normpath(os.path.join(os.path.dirname(path), file_part)) if file_part else path
            if not os.path.exists(resolved):
                broken.append(f'{path}:{number}: {target}: no such file')
            elif anchor and resolved.endswith('.md') and anchor not in anchors(resolved):
                broken.append(f'{path}:{number}: {target}: no heading #{anchor}')
for b in broken:
    print(b, file=sys.stderr)
if broken:
    sys.exit(f'book: {len(broken)} broken internal link(s)')
print(f'book: built; {len(files)} files, every internal link resolves')
PY
