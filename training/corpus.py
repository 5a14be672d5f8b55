"""Rebuild the embedded demo model's data set from its sources, in one command.

    python -m training.corpus --out data/embedded [--max-mb 40] [--seed 0]

Real English text comes from Debian packages, fetched with `apt-get download` into `.cache/debs/` and unpacked with
`dpkg -x` (never installed): the King James Bible, the GNU Collaborative International Dictionary of English, WordNet
glosses, the Python documentation, fortune cookies and the Jargon File. A package that cannot be fetched is skipped
with a warning and recorded as missing in the manifest. Generated text (worked arithmetic, formulas, chat Q&A) comes
from `training.synthetic`; chats about the pretraining text itself (definitions, "How do I") from `training.qa`.

Writes to --out:
    pretrain.jsonl       {"text", "source"} per line: real text (at most --max-mb) + generated text, shuffled
    sft.jsonl            {"messages": [{"role", "content"}, ...], "source"} per line
    eval_arith.jsonl     {"prompt", "answer", "op", "digits"}: held-out arithmetic, disjoint from all training text
    heldout_text.jsonl   {"text", "source"}: a slice of each real source kept out of pretrain.jsonl, for perplexity
    manifest.json        every source (package, version, licence, bytes, documents) and the sha256 of every output
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import random
import re
import shutil
import subprocess
import sys
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from html.parser import HTMLParser
from pathlib import Path

from sdar_core.paths import REPO
from training import qa, synthetic

ALPACA_PATH = REPO / "training" / "data" / "alpaca_en_demo.json"
ALPACA_LICENCE = "CC BY-NC 4.0"  # shipped in the repository; no longer in the embedded models' data
MAX_DOC_CHARS = (
    4000  # longer texts are split at paragraph boundaries into documents of at most this many characters
)


@dataclass
class CorpusConfig:
    """Everything that decides the data set's contents; recorded in the manifest."""

    out: str = "data/embedded"
    max_mb: float = 40.0  # cap on the real text in pretrain.jsonl (MB of UTF-8 text)
    seed: int = 0
    cache: str = ".cache/debs"
    n_arith: int = 30_000  # worked arithmetic problems in pretrain.jsonl
    n_formula: int = 15_000  # conversion / algebra / sequence / record / comparison items in pretrain.jsonl
    n_sft_arith: int = 12_000  # arithmetic chats in sft.jsonl
    n_sft_formula: int = 6_000  # formula chats in sft.jsonl
    n_eval: int = 1_000  # held-out arithmetic problems
    n_sft_define: int = 8_000  # WordNet definition chats in sft.jsonl (training.qa)
    n_sft_howto: int = 2_500  # Python "How do I ...?" chats in sft.jsonl (all there are: about 2,000)
    n_eval_define: int = 500  # held-out definitions (eval_define.jsonl)
    heldout_fraction: float = 0.01
    heldout_max_bytes: int = 200_000  # per source


# ---------------------------------------------------------------------------------------------------------------
# Cleaning: pure functions on strings


def normalize_whitespace(text: str) -> str:
    """NFC-normalise, unify line ends, turn tabs/odd spaces into spaces, strip line ends, at most one blank line."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    text = re.sub(r"[\t\f\v\u00a0\u2000-\u200b\u202f\u205f\u3000]", " ", text)
    text = "".join(ch for ch in text if ch == "\n" or unicodedata.category(ch) not in ("Cc", "Cf", "Cs"))
    text = re.sub(r"[ ]+", " ", text)
    text = re.sub(r" *\n *", "\n", text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip()


def reflow(text: str) -> str:
    """Join hard-wrapped lines inside each paragraph (paragraphs are separated by blank lines)."""
    paragraphs = re.split(r"\n\s*\n", text)
    return "\n\n".join(
        " ".join(line.strip() for line in p.splitlines() if line.strip()) for p in paragraphs
    ).strip()


def split_documents(text: str, max_chars: int = MAX_DOC_CHARS) -> list[str]:
    """Pack consecutive paragraphs into documents of at most max_chars (a longer paragraph is cut at sentences)."""
    docs, current = [], ""
    for para in text.split("\n\n"):
        pieces = [para] if len(para) <= max_chars else _cut_sentences(para, max_chars)
        for piece in pieces:
            if current and len(current) + 2 + len(piece) > max_chars:
                docs.append(current)
                current = ""
            current = f"{current}\n\n{piece}" if current else piece
    if current:
        docs.append(current)
    return docs


def _cut_sentences(para: str, max_chars: int) -> list[str]:
    out, current = [], ""
    for sentence in re.split(r"(?<=[.!?;])\s+", para):
        if current and len(current) + 1 + len(sentence) > max_chars:
            out.append(current)
            current = ""
        while len(sentence) > max_chars:  # no sentence boundary: hard cut
            out.append(sentence[:max_chars])
            sentence = sentence[max_chars:]
        if current and len(current) + 1 + len(sentence) > max_chars:
            out.append(current)
            current = ""
        current = f"{current} {sentence}" if current else sentence
    return out + ([current] if current else [])


def looks_like_prose(doc: str, min_chars: int = 40) -> bool:
    """Keep a document if it is long enough and mostly letters and spaces (drops tables, ASCII art, index lists)."""
    if len(doc) < min_chars:
        return False
    letters = sum(ch.isalpha() or ch == " " for ch in doc)
    return letters / len(doc) > 0.7


# Private-use characters that stand in, while the page is parsed, for what normalize_whitespace must not touch.
PRE_SPACE = "\ue000"  # a space inside <pre>
LINE, PARAGRAPH = "\ue001", "\ue002"  # the edge of a block element: a line break / a blank line


class _MainText(HTMLParser):
    """Collects the text of an HTML page (of its `role="main"` element when there is one), one block per line."""

    BLOCK = {
        "p",
        "div",
        "section",
        "li",
        "ul",
        "ol",
        "dl",
        "dt",
        "dd",
        "tr",
        "table",
        "pre",
        "br",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "blockquote",
        "figure",
        "hr",
    }
    PARAGRAPHS = {"p", "pre", "h1", "h2", "h3", "h4", "h5", "h6", "dt", "table", "blockquote", "section"}
    SKIP = {"script", "style", "head", "nav", "noscript"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.main_parts: list[str] = []
        self.skip_depth = 0  # inside <script>, <style>, ... or a Sphinx "¶" header link
        self.pre_depth = 0
        self.main_depth = 0  # depth of open tags inside the role="main" element; 0 = not inside
        self.stack: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag in ("br", "hr", "img", "meta", "link", "input", "wbr"):
            self._emit(LINE if tag in ("br", "hr") else "")
            return
        self.stack.append(tag)
        if self.main_depth:
            self.main_depth += 1
        elif attrs.get("role") == "main":
            self.main_depth = 1
        if tag in self.SKIP or (tag == "a" and "headerlink" in (attrs.get("class") or "")) or self.skip_depth:
            self.skip_depth += 1
        if tag == "pre":
            self.pre_depth += 1
        if tag in self.BLOCK:
            self._emit(PARAGRAPH if tag in self.PARAGRAPHS else LINE)

    def handle_endtag(self, tag):
        if tag not in self.stack:
            return
        while self.stack:  # close unclosed children too (HTML allows <p> without </p>)
            open_tag = self.stack.pop()
            if self.skip_depth:
                self.skip_depth -= 1
            if open_tag == "pre":
                self.pre_depth -= 1
            if self.main_depth:
                self.main_depth -= 1
            if open_tag in self.BLOCK:
                self._emit(PARAGRAPH if open_tag in self.PARAGRAPHS else LINE)
            if open_tag == tag:
                break

    def handle_data(self, data):
        if self.skip_depth:
            return
        if self.pre_depth:  # code keeps its indentation: protect its spaces from normalize_whitespace
            data = data.replace(" ", PRE_SPACE).replace("\t", PRE_SPACE * 4)
        else:
            data = re.sub(r"\s+", " ", data)
        self._emit(data)

    def _emit(self, s: str):
        self.parts.append(s)
        if self.main_depth:
            self.main_parts.append(s)


def html_to_text(page: str) -> str:
    """The readable text of an HTML page: tags, scripts, styles and navigation dropped, entities decoded.

    Block elements become line breaks and paragraphs become blank-line separated; `<pre>` keeps its layout. When the
    page marks its main content (`role="main"`, as Sphinx does), only that is kept.
    """
    parser = _MainText()
    parser.feed(page)
    parser.close()
    text = "".join(parser.main_parts or parser.parts)
    # A run of block edges (and the whitespace between them) is one break: a blank line if any edge is a paragraph's.
    text = re.sub(
        rf"[\s{LINE}{PARAGRAPH}]*[{LINE}{PARAGRAPH}][\s{LINE}{PARAGRAPH}]*",
        lambda m: "\n\n" if PARAGRAPH in m[0] or "\n\n" in m[0] else "\n",
        text,
    )
    text = normalize_whitespace(text).replace(PRE_SPACE, " ")
    return "\n".join(line.rstrip() for line in text.split("\n"))


GCIDE_SOURCES = (
    r"1913 Webster|Webster 1913 Suppl\.|PJC|WordNet 1\.5(?: \+PJC)?|Century Dict\.|Chambers 1881|RN|AS|MW10"
)
GCIDE_MARKS = {
    "'": "\u0301",
    "`": "\u0300",
    "^": "\u0302",
    '"': "\u0308",
    "~": "\u0303",
    "=": "\u0304",
    "-": "\u0304",
    ",": "\u0327",
    ".": "\u0307",
}
GCIDE_LETTERS = {"ae": "æ", "AE": "Æ", "oe": "œ", "OE": "Œ", "eth": "ð", "th": "þ", "deg": "°", "ng": "ŋ"}


def _gcide_letter(m: re.Match) -> str:
    """`['e]` -> é, `[a^]` -> ă, `[ae]` -> æ; anything else is left as it was."""
    inner = m[1]
    if inner in GCIDE_LETTERS:
        return GCIDE_LETTERS[inner]
    if len(inner) == 2 and inner[0] in GCIDE_MARKS and inner[1].isalpha():
        return unicodedata.normalize("NFC", inner[1] + GCIDE_MARKS[inner[0]])
    if len(inner) == 2 and inner[1] == "^" and inner[0].isalpha():
        return unicodedata.normalize("NFC", inner[0] + "\u0306")
    return m[0]


def clean_gcide_entry(entry: str) -> str:
    """One GCIDE dictionary entry as prose: source tags, pronunciations (`\\An*nex"\\`) and cross-reference
    braces removed, letter codes such as `['e]` turned into the letters they stand for, lines reflowed."""
    entry = re.sub(
        rf"\n?[ ]*\[(?:{GCIDE_SOURCES})\][^\n]*", "", entry
    )  # tag and stray text after it, whole line
    entry = re.sub(r"\s*\\[^\\\n]*\\", "", entry)
    entry = re.sub(r"\{([^{}]*)\}", r"\1", entry)
    entry = re.sub(r"\[([^\]\s]{2,3})\]", _gcide_letter, entry)
    return normalize_whitespace(reflow(entry))


# ---------------------------------------------------------------------------------------------------------------
# Extractors: one per Debian package, from its unpacked tree to documents


def bible_documents(roots: dict[str, Path]) -> Iterator[str]:
    """King James Bible, one document per chapter, one verse per line (decoded with the package's `bible` tool)."""
    tool = roots["bible-kjv"] / "usr/bin/bible"
    data = roots["bible-kjv-text"] / "usr/lib"
    out = subprocess.run(
        [str(tool), "-p", str(data), "-f", "gen1:1-rev22:21"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    chapter, verses = None, []
    for line in out.splitlines():
        m = re.match(r"^(\d?[A-Za-z]+)(\d+):(\d+) (.*)$", line)
        if not m:
            continue
        if (m[1], m[2]) != chapter and verses:
            yield normalize_whitespace("\n".join(verses))
            verses = []
        chapter = (m[1], m[2])
        verses.append(m[4])
    if verses:
        yield normalize_whitespace("\n".join(verses))


def gcide_documents(roots: dict[str, Path]) -> Iterator[str]:
    """GCIDE entries (the 1913 Webster and later additions), cleaned, packed into documents."""
    with gzip.open(
        roots["dict-gcide"] / "usr/share/dictd/gcide.dict.dz", "rt", encoding="utf-8", errors="replace"
    ) as f:
        raw = f.read()
    entries = re.split(r"\n\s*\n(?=\S)", raw)  # an entry starts at column 0 after a blank line
    text = "\n\n".join(
        e for e in (clean_gcide_entry(e) for e in entries[1:]) if len(e) > 30 and "00-database" not in e
    )
    yield from split_documents(text)


def wordnet_documents(roots: dict[str, Path]) -> Iterator[str]:
    """WordNet synsets as `word, synonym (noun): gloss` lines, 25 consecutive synsets per document."""
    pos_name = {"noun": "noun", "verb": "verb", "adj": "adjective", "adv": "adverb"}
    for pos in ("noun", "verb", "adj", "adv"):
        lines = []
        for line in (roots["wordnet-base"] / f"usr/share/wordnet/data.{pos}").read_text("utf-8").splitlines():
            if line.startswith("  ") or " | " not in line:
                continue  # licence header
            head, gloss = line.split(" | ", 1)
            fields = head.split()
            count = int(fields[3], 16)
            words = [re.sub(r"\(\w+\)$", "", w).replace("_", " ") for w in fields[4 : 4 + 2 * count : 2]]
            lines.append(f"{', '.join(words)} ({pos_name[pos]}): {gloss.strip()}")
            if len(lines) == 25:
                yield "\n".join(lines)
                lines = []
        if lines:
            yield "\n".join(lines)


PYDOC_SKIP = re.compile(
    r"(^|/)(genindex.*|contents|search|py-modindex|copyright|license|download|bugs|about)\.html$"
)


def python_doc_documents(roots: dict[str, Path]) -> Iterator[str]:
    """The Python 3.11 documentation (tutorial, library, reference, howtos, ...), HTML stripped to text."""
    html_root = roots["python3.11-doc"] / "usr/share/doc/python3.11/html"
    for page in sorted(html_root.rglob("*.html")):
        rel = page.relative_to(html_root).as_posix()
        if rel.startswith("_") or PYDOC_SKIP.search(rel):
            continue
        yield from split_documents(html_to_text(page.read_text("utf-8", errors="replace")))


FORTUNE_SKIP = {"ascii-art", "ethnic", "men-women", "drugs", "politics", "love"}


def fortune_documents(roots: dict[str, Path]) -> Iterator[str]:
    """Fortune cookies (quotations, jokes, poems) from the non-offensive files, a dozen per document."""
    folder = roots["fortunes"] / "usr/share/games/fortunes"
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.suffix or path.name in FORTUNE_SKIP:
            continue  # .dat indexes and .u8 links
        cookies = [normalize_whitespace(c) for c in path.read_text("utf-8", errors="replace").split("\n%\n")]
        cookies = [c for c in cookies if c and c != "%"]
        for i in range(0, len(cookies), 12):
            yield "\n\n".join(cookies[i : i + 12])


def jargon_documents(roots: dict[str, Path]) -> Iterator[str]:
    """The Jargon File's glossary entries (`:term: pronunciation, part of speech` then the definition), reflowed."""
    path = roots["jargon-text"] / "usr/share/doc/jargon-text/jargon.txt.gz"
    with gzip.open(path, "rt", encoding="utf-8", errors="replace") as f:
        raw = f.read()
    start = re.search(r"^ *:[^:\n]+:", raw, flags=re.MULTILINE)
    body = raw[start.start() :] if start else raw
    body = re.sub(r"\{([^{}]*)\}", r"\1", body)
    entries = re.split(r"\n(?= *:[^:\n]+:)", body)
    text = "\n\n".join(
        normalize_whitespace(reflow(e.strip().lstrip(":").replace(": ", ": ", 1))) for e in entries
    )
    yield from split_documents(text)


@dataclass
class DebianSource:
    """A real-text source: the Debian packages it needs and the function that turns their files into documents."""

    name: str
    packages: list[str]  # the first one is the one whose text we use; others are tools (bible-kjv)
    licence: str
    description: str
    extract: Callable[[dict[str, Path]], Iterator[str]]


SOURCES = [
    DebianSource(
        "bible-kjv",
        ["bible-kjv-text", "bible-kjv"],
        "Public domain (text); GPL-2+ (decoder tool only)",
        "King James Version of the Bible (1611), one chapter per document",
        bible_documents,
    ),
    DebianSource(
        "gcide",
        ["dict-gcide"],
        "GPL-2+",
        "GNU Collaborative International Dictionary of English (Webster 1913 + additions)",
        gcide_documents,
    ),
    DebianSource(
        "wordnet",
        ["wordnet-base"],
        "WordNet 3.0 licence (permissive, BSD-like)",
        "WordNet 3.0 synsets and glosses",
        wordnet_documents,
    ),
    DebianSource(
        "python-docs",
        ["python3.11-doc"],
        "PSF-2.0 (Python Software Foundation License)",
        "Python 3.11 documentation, HTML stripped to text",
        python_doc_documents,
    ),
    DebianSource(
        "fortunes",
        ["fortunes"],
        "BSD (fortune-mod); quotations of mixed origin",
        "fortune(6) cookies: quotations, jokes, short poems (offensive/political files excluded)",
        fortune_documents,
    ),
    DebianSource(
        "jargon",
        ["jargon-text"],
        "Public domain",
        "The Jargon File 4.4.7 (hacker slang glossary)",
        jargon_documents,
    ),
]


# ---------------------------------------------------------------------------------------------------------------
# Fetching: apt-get download + dpkg -x into the cache


def fetch_deb(package: str, cache: Path) -> tuple[Path | None, str]:
    """The cached .deb of `package` (downloaded with `apt-get download` if absent), or (None, why not)."""
    cache.mkdir(parents=True, exist_ok=True)
    found = sorted(cache.glob(f"{package}_*.deb"))
    if found:
        return found[-1], ""
    if shutil.which("apt-get") is None:
        return None, "apt-get not found (not a Debian system)"
    try:
        run = subprocess.run(
            ["apt-get", "download", package], cwd=cache, capture_output=True, text=True, timeout=600
        )
    except subprocess.TimeoutExpired:
        return None, "apt-get download timed out"
    found = sorted(cache.glob(f"{package}_*.deb"))
    if run.returncode != 0 or not found:
        return None, f"apt-get download failed: {run.stderr.strip()[-300:]}"
    return found[-1], ""


def unpack_deb(deb: Path, cache: Path) -> Path:
    """Unpack a .deb with `dpkg -x` into cache/unpacked/<file stem> (once) and return that folder."""
    target = cache / "unpacked" / deb.stem
    if not (target / ".complete").exists():
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        subprocess.run(["dpkg", "-x", str(deb), str(target)], check=True, capture_output=True, timeout=600)
        (target / ".complete").touch()
    return target


def deb_version(deb: Path) -> str:
    return subprocess.run(
        ["dpkg-deb", "-f", str(deb), "Version"], capture_output=True, text=True, check=True
    ).stdout.strip()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class SourceRecord:
    """What the manifest says about one source."""

    name: str
    kind: str  # "debian" | "generated" | "file"
    licence: str
    description: str
    used_for: str
    status: str = "ok"  # "ok" | "missing"
    reason: str = ""
    packages: dict = field(default_factory=dict)  # package -> {"version", "deb", "deb_sha256"}
    bytes: int = 0  # UTF-8 bytes of text used in the outputs
    documents: int = 0
    available_bytes: int = 0  # before the --max-mb cap (real text only)
    heldout_bytes: int = 0
    heldout_documents: int = 0


def load_debian_source(src: DebianSource, cache: Path) -> tuple[list[str], SourceRecord]:
    """All clean documents of one source, or none with the record marked missing (never raises)."""
    rec = SourceRecord(
        src.name, "debian", src.licence, src.description, "pretraining text; held-out perplexity text"
    )
    roots = {}
    for package in src.packages:
        deb, why = fetch_deb(package, cache)
        if deb is None:
            print(f"warning: skipping source {src.name}: package {package}: {why}", file=sys.stderr)
            rec.status, rec.reason = "missing", f"{package}: {why}"
            return [], rec
        try:
            roots[package] = unpack_deb(deb, cache)
            rec.packages[package] = {
                "version": deb_version(deb),
                "deb": deb.name,
                "deb_sha256": sha256_file(deb),
            }
        except (subprocess.SubprocessError, OSError) as e:
            print(f"warning: skipping source {src.name}: cannot unpack {deb.name}: {e}", file=sys.stderr)
            rec.status, rec.reason = "missing", f"{package}: cannot unpack: {e}"
            return [], rec
    try:
        docs = [d for d in (normalize_whitespace(d) for d in src.extract(roots)) if looks_like_prose(d)]
    except (subprocess.SubprocessError, OSError, ValueError, KeyError) as e:
        print(f"warning: skipping source {src.name}: extraction failed: {e!r}", file=sys.stderr)
        rec.status, rec.reason = "missing", f"extraction failed: {e!r}"
        return [], rec
    rec.available_bytes = sum(len(d.encode()) for d in docs)
    print(f"{src.name}: {len(docs)} documents, {rec.available_bytes / 1e6:.1f} MB", file=sys.stderr)
    return docs, rec


# ---------------------------------------------------------------------------------------------------------------
# Mixing


def fair_share(sizes: dict[str, int], budget: int) -> dict[str, int]:
    """Split a byte budget among sources: equal shares, a source smaller than its share keeps all of it and the
    rest is shared again among the others (water-filling). Returns bytes allowed per source."""
    alloc, left, todo = {}, budget, sorted(sizes, key=lambda k: sizes[k])
    while todo:
        share = left // len(todo)
        name = todo[0]
        if sizes[name] <= share:
            alloc[name] = sizes[name]
            left -= sizes[name]
            todo.pop(0)
        else:
            for name in todo:
                alloc[name] = share
            break
    return alloc


def take_bytes(docs: list[str], budget: int) -> list[str]:
    """The leading documents whose total UTF-8 size stays within budget."""
    out, used = [], 0
    for d in docs:
        n = len(d.encode())
        if used + n > budget:
            break
        out.append(d)
        used += n
    return out


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def build(cfg: CorpusConfig) -> dict:
    """Build the whole data set into cfg.out and return the manifest (also written as manifest.json)."""
    out, cache = Path(cfg.out), Path(cfg.cache)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(f"corpus-{cfg.seed}")

    real, records = {}, []
    for src in SOURCES:
        docs, rec = load_debian_source(src, cache)
        rng.shuffle(docs)
        held = take_bytes(docs, min(int(rec.available_bytes * cfg.heldout_fraction), cfg.heldout_max_bytes))
        rec.heldout_documents, rec.heldout_bytes = len(held), sum(len(d.encode()) for d in held)
        real[src.name] = (held, docs[len(held) :])
        records.append(rec)

    sizes = {name: sum(len(d.encode()) for d in rest) for name, (_, rest) in real.items()}
    alloc = fair_share(sizes, int(cfg.max_mb * 1e6))
    pretrain, heldout = [], []
    for rec in records:
        held, rest = real[rec.name]
        kept = take_bytes(rest, alloc.get(rec.name, 0))
        rec.documents, rec.bytes = len(kept), sum(len(d.encode()) for d in kept)
        pretrain += [{"text": d, "source": rec.name} for d in kept]
        heldout += [{"text": d, "source": rec.name} for d in held]

    gen_docs = synthetic.pretrain_documents(cfg.n_arith, cfg.n_formula, cfg.seed)
    pretrain += [{"text": d, "source": "synthetic"} for d in gen_docs]
    rng.shuffle(pretrain)

    gen_chats = synthetic.sft_chats(cfg.n_sft_arith, cfg.n_sft_formula, cfg.seed)
    kept_text = lambda name: [r["text"] for r in pretrain if r["source"] == name]  # noqa: E731
    words = qa.wordnet_entries(kept_text("wordnet"))  # only glosses that are in pretrain.jsonl
    define = qa.definition_chats(words, cfg.n_sft_define, cfg.seed)
    howto = qa.howto_chats(kept_text("python-docs"), cfg.n_sft_howto, cfg.seed)
    sft = (
        [{"messages": m, "source": "synthetic"} for m in gen_chats]
        + [{"messages": m, "source": "wordnet-qa"} for m in define]
        + [{"messages": m, "source": "python-docs-qa"} for m in howto]
    )
    random.Random(f"sft-{cfg.seed}").shuffle(sft)
    define_eval = qa.heldout_definitions(words, cfg.n_eval_define, cfg.seed)

    eval_rows = synthetic.eval_arith_set(cfg.n_eval, cfg.seed)  # disjoint from training by the hash split

    write_jsonl(out / "pretrain.jsonl", pretrain)
    write_jsonl(out / "sft.jsonl", sft)
    write_jsonl(out / "eval_arith.jsonl", eval_rows)
    write_jsonl(out / "heldout_text.jsonl", heldout)
    write_jsonl(out / "eval_define.jsonl", define_eval)

    gen_text_bytes = sum(len(d.encode()) for d in gen_docs)
    records.append(
        SourceRecord(
            "synthetic",
            "generated",
            "Generated by training/synthetic.py (project code)",
            "worked arithmetic, unit conversions, linear equations, sequences, JSON records, comparisons, identity Q&A",
            f"pretraining text ({len(gen_docs)} docs); SFT chats ({len(gen_chats)}); "
            f"held-out eval_arith ({len(eval_rows)})",
            bytes=gen_text_bytes + sum(len(json.dumps(m, ensure_ascii=False).encode()) for m in gen_chats),
            documents=len(gen_docs) + len(gen_chats),
        )
    )
    for name, chats, what in (
        ("wordnet-qa", define, "definition chats from the WordNet glosses in pretraining"),
        ("python-docs-qa", howto, '"How do I ...?" chats from the Python documentation'),
    ):
        records.append(
            SourceRecord(
                name,
                "generated",
                "as its source (training/qa.py, project code)",
                what,
                f"SFT chats ({len(chats)})" + ("; held-out eval_define" if name == "wordnet-qa" else ""),
                bytes=sum(len(json.dumps(m, ensure_ascii=False).encode()) for m in chats),
                documents=len(chats),
            )
        )

    outputs = {}
    for name in (
        "pretrain.jsonl",
        "sft.jsonl",
        "eval_arith.jsonl",
        "heldout_text.jsonl",
        "eval_define.jsonl",
    ):
        path = out / name
        outputs[name] = {
            "bytes": path.stat().st_size,
            "lines": sum(1 for _ in open(path, encoding="utf-8")),
            "sha256": sha256_file(path),
        }
    manifest = {
        "config": asdict(cfg),
        "sources": [asdict(r) for r in records],
        "outputs": outputs,
        "real_text_bytes": sum(r.bytes for r in records if r.kind == "debian"),
        "missing": [r.name for r in records if r.status != "ok"],
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", "utf-8")
    return manifest


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Rebuild the embedded demo model's data set from its sources.")
    ap.add_argument("--out", default=CorpusConfig.out)
    ap.add_argument("--max-mb", type=float, default=CorpusConfig.max_mb, help="cap on real text, MB")
    ap.add_argument("--seed", type=int, default=CorpusConfig.seed)
    ap.add_argument(
        "--cache", default=CorpusConfig.cache, help="where .deb files are downloaded and unpacked"
    )
    args = ap.parse_args(argv)
    if args.max_mb <= 0:
        ap.error(f"--max-mb must be positive, got {args.max_mb}")
    cfg = CorpusConfig(out=args.out, max_mb=args.max_mb, seed=args.seed, cache=args.cache)
    manifest = build(cfg)
    total = sum(o["bytes"] for o in manifest["outputs"].values())
    print(
        f"wrote {cfg.out}: {total / 1e6:.1f} MB, real text {manifest['real_text_bytes'] / 1e6:.1f} MB"
        + (f", missing sources: {', '.join(manifest['missing'])}" if manifest["missing"] else "")
    )


if __name__ == "__main__":
    main()
