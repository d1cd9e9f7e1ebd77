#!/usr/bin/env python3
"""Checks the relative links in the project's Markdown: README.md, docs/*.md, BENCHMARKS.md and
benchmarks/**/*.md. Every relative link must name a file or folder that exists, and every
`#anchor` must match a heading of the Markdown file it points into (GitHub's slugs: lower case,
punctuation dropped, spaces to hyphens, `-1`, `-2`, … for repeated headings) or an explicit
`id`/`name` in its HTML. External links (http:, https:, mailto:, …) are skipped: no network.
Links inside fenced code blocks and inline code are not links. Prints file:line for each broken
link and exits 1 if there is any. Python 3 standard library only."""
import pathlib
import re
import sys
import unicodedata
from urllib.parse import unquote

root = pathlib.Path(__file__).resolve().parent.parent


def checked_files():
    files = [root / "README.md", root / "BENCHMARKS.md"]
    files += sorted((root / "docs").glob("*.md"))
    files += sorted((root / "benchmarks").rglob("*.md"))
    return [f for f in files if f.is_file()]


FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
ATX = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
CODE_SPAN = re.compile(r"(`+)(.+?)(?<!`)\1(?!`)")
INLINE_LINK = re.compile(
    r"\]\(\s*(<[^>\n]*>|[^)\s]+)(?:\s+(?:\"[^\"]*\"|'[^']*'|\([^)]*\)))?\s*\)"
)
REFERENCE_DEF = re.compile(r"^ {0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)")
HTML_LINK = re.compile(r"<(?:a|img)\b[^>]*?\b(?:href|src)\s*=\s*[\"']([^\"']*)[\"']", re.I)
HTML_ID = re.compile(r"<[a-z][^>]*?\b(?:id|name)\s*=\s*[\"']([^\"']+)[\"']", re.I)
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:|^//")


def lines_outside_code(text):
    """(line number, line) for every line not inside a fenced code block."""
    fence = None
    for number, line in enumerate(text.splitlines(), 1):
        m = FENCE.match(line)
        if fence is None:
            if m:
                fence = m.group(1)
                continue
            yield number, line
        elif m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence) and not line.strip()[len(m.group(1)):].strip():
            fence = None


def without_code_spans(line):
    """The line with inline code blanked out (same length, so nothing inside is read as a link)."""
    return CODE_SPAN.sub(lambda m: " " * len(m.group(0)), line)


def heading_text(markdown):
    """What a heading renders as, close enough for its slug: code spans keep their text, links
    and images their text, emphasis markers and HTML tags go."""
    text = CODE_SPAN.sub(lambda m: m.group(2).strip(), markdown)
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"<[^>]+>", "", text)
    text = re.sub(r"(\*+|~~)", "", text)
    return text.strip()


def slug(text):
    """GitHub's anchor for a heading's text (github-slugger)."""
    kept = []
    for ch in text.lower():
        if ch in " -_" or unicodedata.category(ch)[0] in "LNM":
            kept.append(ch)
    return "".join(kept).replace(" ", "-")


_anchors = {}


def anchors(path):
    """Every anchor a Markdown file offers."""
    if path not in _anchors:
        found, seen = set(), {}
        previous = None  # the previous line, when it could be a setext heading's text
        for _, line in lines_outside_code(path.read_text(encoding="utf-8")):
            text = None
            m = ATX.match(line)
            if m:
                text = m.group(2) or ""
            elif previous is not None and SETEXT.match(line):
                text = previous
            if text is not None:
                base = slug(heading_text(text))
                count = seen.get(base, 0)
                seen[base] = count + 1
                found.add(base if count == 0 else f"{base}-{count}")
                previous = None
            else:
                stripped = line.strip()
                paragraph = stripped and not re.match(r"^([-*+>|]|\d+[.)]\s|<)", stripped)
                previous = stripped if paragraph else None
            found.update(HTML_ID.findall(line))
        _anchors[path] = found
    return _anchors[path]


def targets(line):
    """The link targets on a line (inline links and images, reference definitions, HTML)."""
    plain = without_code_spans(line)
    found = [m.group(1) for m in INLINE_LINK.finditer(plain)]
    m = REFERENCE_DEF.match(plain)
    if m:
        found.append(m.group(1))
    found += HTML_LINK.findall(plain)
    return [t[1:-1] if t.startswith("<") and t.endswith(">") else t for t in found]


def problem(source, target):
    """Why `target`, linked from `source`, is broken; None when it resolves or is external."""
    if SCHEME.match(target):
        return None
    path_part, _, fragment = target.partition("#")
    path_part = unquote(path_part)
    if path_part.startswith("/"):
        dest = root / path_part.lstrip("/")
    elif path_part:
        dest = source.parent / path_part
    else:
        dest = source
    dest = pathlib.Path(*dest.parts).resolve()
    if root not in dest.parents and dest != root:
        return "points outside the repository"
    if not dest.exists():
        return f"{dest.relative_to(root)} does not exist"
    if fragment and dest.is_file() and dest.suffix.lower() in (".md", ".markdown"):
        if unquote(fragment) not in anchors(dest):
            return f"no heading or id in {dest.relative_to(root)} has the anchor #{fragment}"
    return None


def main():
    errors, links, external = [], 0, 0
    files = checked_files()
    for path in files:
        for number, line in lines_outside_code(path.read_text(encoding="utf-8")):
            for target in targets(line):
                links += 1
                if SCHEME.match(target):
                    external += 1
                    continue
                why = problem(path, target)
                if why:
                    errors.append(f"{path.relative_to(root)}:{number}: broken link ({target}): {why}")
    if errors:
        print("\n".join(errors))
        sys.exit(1)
    print(
        f"{links - external} relative links and anchors resolve in {len(files)} Markdown files"
        f" ({external} external links not fetched)"
    )


if __name__ == "__main__":
    main()
