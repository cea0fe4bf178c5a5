"""A deterministic, offline demo corpus of real text taken from documentation of installed packages.

Nothing here writes prose of its own: every document is a chunk of documentation that ships
inside the Python installation or a package in this environment. The sources have clearly
different vocabularies, so a clustering of the corpus has something to find:

- ``python_reference``: the language reference topics of ``pydoc_data.topics`` (what ``help()``
  shows for keywords and statements), plus the docstrings of the ``builtins`` module.
- ``python_stdlib``: docstrings of a fixed allow-list of pure-Python standard-library modules,
  read from their source files with ``ast`` (nothing is imported).
- ``aws_api``: the documentation strings of operations and shapes in botocore's service models
  (``botocore/data/<service>/<date>/service-2.json[.gz]``), HTML stripped.
- ``numpy``: docstrings of numpy's public functions, classes and methods.
- ``torch``: docstrings of torch, ``torch.nn`` and related public modules.
- ``sqlalchemy``: docstrings of SQLAlchemy's public API (Core and ORM).

Texts are cut into documents of ``MIN_CHARS``..``MAX_CHARS`` characters at paragraph
boundaries. The candidate chunks of a source come in a stable order, selection is seeded, and all
files are written atomically, so the same seed and the same package versions give byte-identical
files. ``manifest.json`` records the parameters, the package versions and a checksum per file; a
second build into the same folder with the same parameters returns the existing corpus.

Layout under the output folder::

    corpus/shard-000.parquet   doc_id, text, source (even shards are Parquet)
    corpus/shard-001.jsonl     the same keys, one JSON object per line (odd shards)
    targets/<source>.jsonl     held-out chunks of one source, {"text": ...} per line
    targets/<source>.txt       the same chunks joined by blank lines
    manifest.json              parameters, counts, versions, files and checksums
"""

from __future__ import annotations

import argparse
import ast
import gzip
import hashlib
import html
import importlib
import importlib.metadata
import inspect
import io
import json
import logging
import os
import platform
import re
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

MIN_CHARS = 200
MAX_CHARS = 2000
# Paragraphs are packed into a chunk until it holds at least this many characters. Packing to
# the minimum keeps documents short (sentence-embedding models read ~1,000 characters) and gives
# the smallest source, the Python language reference, enough chunks for the default build.
TARGET_CHARS = MIN_CHARS
MIN_FRACTION = 0.5
FORMAT_VERSION = 1

DEMO_SOURCES: tuple[str, ...] = (
    "python_reference",
    "python_stdlib",
    "aws_api",
    "numpy",
    "torch",
    "sqlalchemy",
)

# Distributions whose version decides the text of each source (besides Python itself).
_SOURCE_PACKAGES: dict[str, tuple[str, ...]] = {
    "python_reference": (),
    "python_stdlib": (),
    "aws_api": ("botocore",),
    "numpy": ("numpy",),
    "torch": ("torch",),
    "sqlalchemy": ("sqlalchemy",),
}
# Used to write the files and to draw the samples.
_WRITER_PACKAGES = ("numpy", "pyarrow")

# Pure-Python standard-library modules and packages, sorted and fixed. Their docstrings are read
# from the source files with `ast`, so nothing is imported or executed, and other packages that
# patch the standard library in this process (some do) cannot change the text. Left out: GUI
# (tkinter, turtle, turtledemo, idlelib), test suites (test, */test, */tests), easter eggs
# (antigravity, this), deprecated modules, codec tables (encodings) and the reference topics
# (pydoc_data, its own source).
STDLIB_MODULES: tuple[str, ...] = (
    "abc",
    "argparse",
    "ast",
    "asyncio",
    "base64",
    "bdb",
    "bisect",
    "calendar",
    "cmd",
    "code",
    "codecs",
    "codeop",
    "collections",
    "colorsys",
    "compileall",
    "concurrent",
    "configparser",
    "contextlib",
    "copy",
    "copyreg",
    "csv",
    "dataclasses",
    "datetime",
    "difflib",
    "dis",
    "doctest",
    "email",
    "enum",
    "filecmp",
    "fileinput",
    "fnmatch",
    "fractions",
    "ftplib",
    "functools",
    "getopt",
    "gettext",
    "glob",
    "graphlib",
    "gzip",
    "heapq",
    "hmac",
    "html",
    "http",
    "imaplib",
    "importlib",
    "inspect",
    "ipaddress",
    "json",
    "keyword",
    "linecache",
    "locale",
    "logging",
    "lzma",
    "mailbox",
    "mimetypes",
    "modulefinder",
    "multiprocessing",
    "netrc",
    "numbers",
    "opcode",
    "operator",
    "optparse",
    "os",
    "pathlib",
    "pickle",
    "pickletools",
    "pkgutil",
    "platform",
    "plistlib",
    "poplib",
    "posixpath",
    "pprint",
    "profile",
    "pstats",
    "py_compile",
    "pyclbr",
    "queue",
    "quopri",
    "random",
    "reprlib",
    "runpy",
    "sched",
    "secrets",
    "selectors",
    "shelve",
    "shlex",
    "shutil",
    "smtplib",
    "socketserver",
    "statistics",
    "string",
    "subprocess",
    "symtable",
    "sysconfig",
    "tabnanny",
    "tarfile",
    "tempfile",
    "textwrap",
    "threading",
    "timeit",
    "token",
    "tokenize",
    "tomllib",
    "trace",
    "traceback",
    "tracemalloc",
    "types",
    "typing",
    "unittest",
    "urllib",
    "uuid",
    "warnings",
    "wave",
    "weakref",
    "wsgiref",
    "xml",
    "xmlrpc",
    "zipapp",
    "zipfile",
    "zipimport",
    "zoneinfo",
)
_SKIP_DIRS = frozenset({"test", "tests", "idle_test", "__pycache__"})

NUMPY_MODULES: tuple[str, ...] = (
    "numpy",
    "numpy.char",
    "numpy.fft",
    "numpy.lib.scimath",
    "numpy.lib.stride_tricks",
    "numpy.linalg",
    "numpy.ma",
    "numpy.polynomial",
    "numpy.random",
    "numpy.rec",
    "numpy.strings",
    "numpy.testing",
)

TORCH_MODULES: tuple[str, ...] = (
    "torch",
    "torch.autograd",
    "torch.distributions",
    "torch.fft",
    "torch.linalg",
    "torch.nn",
    "torch.nn.functional",
    "torch.nn.init",
    "torch.nn.utils",
    "torch.optim",
    "torch.optim.lr_scheduler",
    "torch.special",
    "torch.utils.data",
)

SQLALCHEMY_MODULES: tuple[str, ...] = (
    "sqlalchemy",
    "sqlalchemy.engine",
    "sqlalchemy.event",
    "sqlalchemy.exc",
    "sqlalchemy.ext.associationproxy",
    "sqlalchemy.ext.automap",
    "sqlalchemy.ext.declarative",
    "sqlalchemy.ext.hybrid",
    "sqlalchemy.ext.mutable",
    "sqlalchemy.inspection",
    "sqlalchemy.orm",
    "sqlalchemy.pool",
    "sqlalchemy.schema",
    "sqlalchemy.sql",
    "sqlalchemy.sql.expression",
    "sqlalchemy.types",
)


@dataclass(frozen=True)
class DemoCorpusInfo:
    """Where a built demo corpus lies and what it holds."""

    root: Path  # output folder
    shards: list[Path]  # corpus shard files, in shard order
    targets: dict[str, Path]  # held-out text per source (the .txt file)
    n_documents: int  # documents in the corpus (held-out chunks not counted)
    per_source: dict[str, int]  # corpus documents per source


# --------------------------------------------------------------------------------------------
# Text normalisation and chunking
# --------------------------------------------------------------------------------------------

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\u200b\ufeff]")
_BLANK_LINES = re.compile(r"\n[ \t]*\n")
_SENTENCE_END = re.compile(r"(?<=[.!?;:])\s+")


def _normalise(text: str) -> str:
    """Unify line ends, expand tabs, drop control characters and trailing spaces."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").expandtabs(4)
    text = _CONTROL.sub("", text)
    return "\n".join(line.rstrip() for line in text.split("\n")).strip("\n")


def _paragraphs(text: str) -> list[str]:
    """Paragraphs of already-normalised text (separated by blank lines), none empty."""
    return [p.strip("\n") for p in _BLANK_LINES.split(text) if p.strip()]


def _hard_split(text: str, sep: re.Pattern[str] | str, limit: int) -> list[str]:
    """Greedily pack the pieces of `text` split at `sep` into parts of at most `limit` chars.

    A piece longer than `limit` is returned as it is (the caller splits it further).
    """
    if isinstance(sep, str):
        pieces = text.split(sep)
        joiner = sep
    else:
        pieces = sep.split(text)
        joiner = " "
    parts: list[str] = []
    cur = ""
    for piece in pieces:
        if not piece.strip():
            continue
        if not cur:
            cur = piece
        elif len(cur) + len(joiner) + len(piece) <= limit:
            cur = cur + joiner + piece
        else:
            parts.append(cur)
            cur = piece
    if cur:
        parts.append(cur)
    return parts


def _split_long(paragraph: str, limit: int = MAX_CHARS) -> list[str]:
    """Split a paragraph longer than `limit` at lines, then sentences, then spaces."""
    if len(paragraph) <= limit:
        return [paragraph]
    out: list[str] = []
    for part in _hard_split(paragraph, "\n", limit):
        if len(part) <= limit:
            out.append(part)
            continue
        for sentence_part in _hard_split(part, _SENTENCE_END, limit):
            if len(sentence_part) <= limit:
                out.append(sentence_part)
                continue
            for word_part in _hard_split(sentence_part, " ", limit):
                # A single "word" over the limit (a very long URL or token): cut it.
                out.extend(word_part[i : i + limit] for i in range(0, len(word_part), limit))
    return out


def _chunk_units(units: Iterable[str]) -> list[str]:
    """Cut the texts of one group (a module, a service, the reference) into chunks.

    Each unit (one docstring, one topic, one operation's documentation) is normalised, split
    into paragraphs (over-long ones split further) and packed greedily: a chunk is emitted as
    soon as it holds `TARGET_CHARS` characters, and never grows past `MAX_CHARS`. Text that is
    too short to make a chunk on its own (a short unit, the tail of a unit) is pooled with the
    next short text of the same group; what is left at the end of the group joins the group's
    last chunk when it fits, and is dropped otherwise.
    """
    chunks: list[str] = []
    pool: list[str] = []  # paragraphs waiting for more short text
    pool_len = 0

    def pack(paragraphs: list[str]) -> tuple[list[str], list[str]]:
        done: list[str] = []
        cur: list[str] = []
        cur_len = 0
        for para in paragraphs:
            add = len(para) + (2 if cur else 0)
            if cur and cur_len + add > MAX_CHARS:
                # Cannot grow: emit when long enough, otherwise the short head is dropped.
                if cur_len >= MIN_CHARS:
                    done.append("\n\n".join(cur))
                cur, cur_len, add = [], 0, len(para)
            cur.append(para)
            cur_len += add
            if cur_len >= TARGET_CHARS:
                done.append("\n\n".join(cur))
                cur, cur_len = [], 0
        return done, cur

    for unit in units:
        paragraphs = [piece for p in _paragraphs(_normalise(unit)) for piece in _split_long(p)]
        if not paragraphs:
            continue
        done, tail = pack(paragraphs)
        chunks.extend(done)
        for para in tail:
            pool.append(para)
            pool_len += len(para) + 2
        if pool_len >= TARGET_CHARS:
            done, pool = pack(pool)
            chunks.extend(done)
            pool_len = sum(len(p) + 2 for p in pool)
    if pool:
        rest = "\n\n".join(pool)
        if chunks and len(chunks[-1]) + 2 + len(rest) <= MAX_CHARS:
            chunks[-1] = chunks[-1] + "\n\n" + rest
        elif len(rest) >= MIN_CHARS:
            chunks.append(rest)
    return [c for c in chunks if MIN_CHARS <= len(c) <= MAX_CHARS and _is_utf8(c)]


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates
        return False
    return True


# --------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------


def _reference_groups() -> Iterator[list[str]]:
    from pydoc_data.topics import topics

    yield [topics[key] for key in sorted(topics)]
    # The reference topics alone give ~1,000 distinct chunks (topics repeat each other); the
    # docstrings of the built-in functions, types and exceptions (the same subject, documented
    # in the interpreter itself) bring the source above the default 1,100.
    yield from _docstring_groups(["builtins"], "builtins")


def _import_quietly(name: str) -> Any | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return importlib.import_module(name)
        except Exception as exc:  # an optional part of a package that cannot be imported
            logger.debug("demo corpus: skipping module %s (%s)", name, exc)
            return None


def _own_doc(obj: Any) -> str | None:
    doc = obj.__dict__.get("__doc__") if isinstance(obj, type) else getattr(obj, "__doc__", None)
    return inspect.cleandoc(doc) if isinstance(doc, str) and doc.strip() else None


def _docstring_groups(modules: Sequence[str], root: str) -> Iterator[list[str]]:
    """Docstrings per module: the module, its public functions, classes and their members.

    Only objects defined inside package `root` are taken, each once (the first module that
    exposes it, in the given order). Names are visited in sorted order.
    """
    seen: set[int] = set()
    keep: list[Any] = []  # hold objects so that their ids stay unique while we collect

    def first_time(obj: Any) -> bool:
        if id(obj) in seen:
            return False
        seen.add(id(obj))
        keep.append(obj)
        return True

    def ours(obj: Any) -> bool:
        module = getattr(obj, "__module__", None)
        return isinstance(module, str) and (module == root or module.startswith(root + "."))

    for module_name in modules:
        module = _import_quietly(module_name)
        if module is None:
            continue
        units: list[str] = []
        if first_time(module) and (doc := _own_doc(module)):
            units.append(doc)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            names = sorted(n for n in vars(module) if not n.startswith("_"))
            if hasattr(module, "__all__"):
                names = sorted(set(names) | {n for n in module.__all__ if isinstance(n, str)})
            for name in names:
                try:
                    obj = getattr(module, name)
                except Exception:
                    continue
                if inspect.ismodule(obj) or not callable(obj) or not ours(obj):
                    continue
                if not first_time(obj):
                    continue
                if doc := _own_doc(obj):
                    units.append(doc)
                if isinstance(obj, type):
                    units.extend(_member_docs(obj, root, first_time))
        yield units


def _member_docs(cls: type, root: str, first_time: Callable[[Any], bool]) -> list[str]:
    """Docstrings of the public methods and properties of a class, its package's bases included."""
    docs: list[str] = []
    for name in sorted(dir(cls)):
        if name.startswith("_"):
            continue
        for klass in cls.__mro__:
            if name in klass.__dict__:
                raw = klass.__dict__[name]
                break
        else:
            continue
        owner = getattr(klass, "__module__", "") or ""
        if not (owner == root or owner.startswith(root + ".")):
            continue
        if not (inspect.isroutine(raw) or isinstance(raw, property | classmethod | staticmethod)):
            continue
        if not first_time(raw):
            continue
        doc = getattr(raw, "__doc__", None)
        if isinstance(doc, str) and doc.strip():
            docs.append(inspect.cleandoc(doc))
    return docs


def _stdlib_files(name: str) -> list[Path]:
    """The source files of one allow-listed module (a package: all its modules, sorted)."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    single = stdlib / f"{name}.py"
    if single.is_file():
        return [single]
    package = stdlib / name
    if not (package / "__init__.py").is_file():
        return []
    return sorted(
        (p for p in package.rglob("*.py") if not _SKIP_DIRS & set(p.relative_to(package).parts)),
        key=lambda p: p.relative_to(package).as_posix(),
    )


def _ast_docstrings(tree: ast.Module) -> list[str]:
    """Docstrings of a module, its public functions and classes and their public methods."""
    docs = [ast.get_docstring(tree, clean=True)]
    definitions = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    for node in tree.body:
        if not isinstance(node, definitions) or node.name.startswith("_"):
            continue
        docs.append(ast.get_docstring(node, clean=True))
        if isinstance(node, ast.ClassDef):
            for member in node.body:
                if isinstance(member, definitions) and not member.name.startswith("_"):
                    docs.append(ast.get_docstring(member, clean=True))
    return [d for d in docs if d and d.strip()]


def _stdlib_groups() -> Iterator[list[str]]:
    for name in STDLIB_MODULES:
        for path in _stdlib_files(name):
            try:
                tree = ast.parse(path.read_bytes(), filename=str(path))
            except (SyntaxError, ValueError, OSError) as exc:
                logger.debug("demo corpus: skipping %s (%s)", path, exc)
                continue
            yield _ast_docstrings(tree)


_HTML_BLOCK = re.compile(
    r"</?(?:p|li|ul|ol|dl|dt|dd|br|note|important|div|h[1-6]|pre|table|tr|examples|para)"
    r"(?:\s[^>]*)?/?>",
    re.IGNORECASE,
)
_HTML_TAG = re.compile(r"<[^>]+>")
_SPACES = re.compile(r"[ \t\r\n\f\v]+")
_PARA_BREAKS = re.compile(r"(?:\s*\x00\s*)+")


_ESCAPED_TAG = re.compile(r"&lt;/?(?:p|code|a|b|i|li|ul|ol|note|important|br)\b", re.IGNORECASE)
_ENTITY = re.compile(r"&(?:[a-zA-Z]+|#[0-9]+|#x[0-9a-fA-F]+);")


def _html_to_text(doc: str) -> str:
    """HTML documentation as plain paragraphs: block tags break paragraphs, others vanish."""
    if _ESCAPED_TAG.search(doc):  # a few models hold escaped HTML
        doc = html.unescape(doc)
    text = _HTML_BLOCK.sub("\x00", doc)
    text = _HTML_TAG.sub("", text)
    paragraphs = []
    for block in _PARA_BREAKS.split(text):
        block = html.unescape(block)
        if _ENTITY.search(block):  # doubly escaped entities (&amp;amp;)
            block = html.unescape(block)
        para = _SPACES.sub(" ", block).strip()
        if para:
            paragraphs.append(para)
    return "\n\n".join(paragraphs)


def _botocore_models() -> list[tuple[str, Path]]:
    """(service, service-2.json[.gz] path) for the newest API version of each service."""
    import botocore

    data = Path(botocore.__file__).parent / "data"
    models = []
    for service_dir in sorted(p for p in data.iterdir() if p.is_dir()):
        for version_dir in sorted((p for p in service_dir.iterdir() if p.is_dir()), reverse=True):
            plain = version_dir / "service-2.json"
            packed = version_dir / "service-2.json.gz"
            if plain.is_file() or packed.is_file():
                models.append((service_dir.name, plain if plain.is_file() else packed))
                break
    return models


def _aws_groups() -> Iterator[list[str]]:
    for _service, path in _botocore_models():
        raw = path.read_bytes()
        if path.suffix == ".gz":
            raw = gzip.decompress(raw)
        model = json.loads(raw)
        units: list[str] = []
        if doc := model.get("documentation"):
            units.append(doc)
        for section in ("operations", "shapes"):
            entries = model.get(section) or {}
            for name in sorted(entries):
                doc = (
                    entries[name].get("documentation") if isinstance(entries[name], dict) else None
                )
                if isinstance(doc, str) and doc.strip():
                    units.append(doc)
        yield [_html_to_text(u) for u in units]


_SOURCE_GROUPS: dict[str, Callable[[], Iterator[list[str]]]] = {
    "python_reference": _reference_groups,
    "python_stdlib": _stdlib_groups,
    "aws_api": _aws_groups,
    "numpy": lambda: _docstring_groups(NUMPY_MODULES, "numpy"),
    "torch": lambda: _docstring_groups(TORCH_MODULES, "torch"),
    "sqlalchemy": lambda: _docstring_groups(SQLALCHEMY_MODULES, "sqlalchemy"),
}


def _collect_here(source: str) -> list[str]:
    """The chunks of one source, collected in this process."""
    seen: set[str] = set()
    chunks: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for units in _SOURCE_GROUPS[source]():
            for chunk in _chunk_units(units):
                if chunk not in seen:
                    seen.add(chunk)
                    chunks.append(chunk)
    return chunks


def _child_main(source: str) -> None:
    """Entry point of the collecting subprocess: print the chunks of `source` as JSON."""
    chunks = _collect_here(source)
    sys.stdout.buffer.write(json.dumps(chunks, ensure_ascii=True).encode("ascii"))
    sys.stdout.buffer.flush()


# The child loads this file by path, not through `climb_assets`, so that nothing the package
# imports on the way (Dagster, scikit-learn, ...) is in the child's process.
_CHILD_CODE = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("_climb_demo_corpus", sys.argv[1])
module = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = module
spec.loader.exec_module(module)
module._child_main(sys.argv[2])
"""
_CHILD_TIMEOUT_S = 600
_cache: dict[str, tuple[str, ...]] = {}
_cache_lock = threading.Lock()


def _collect_isolated(source: str) -> tuple[str, ...]:
    """Collect one source in a fresh interpreter.

    Docstrings are mutable: packages imported earlier in this process can rewrite them (e.g.
    scikit-learn's import adds notes to numpy's docstrings) or patch the standard library, so
    collecting here would make the text depend on what else was imported. A fresh interpreter
    (fixed hash seed, only this file and the source's own package imported) sees the same text
    every time.
    """
    env = dict(os.environ)
    env["PYTHONHASHSEED"] = "0"
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD_CODE, str(Path(__file__).resolve()), source],
        env=env,
        capture_output=True,
        timeout=_CHILD_TIMEOUT_S,
        check=False,
    )
    if proc.returncode != 0:
        detail = proc.stderr.decode("utf-8", "replace").strip()[-2000:]
        raise RuntimeError(f"collecting demo source {source!r} failed:\n{detail}")
    return tuple(json.loads(proc.stdout))


def _collect_many(sources: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """Chunks of several sources (collected in parallel subprocesses, cached per process)."""
    with _cache_lock:
        missing = [s for s in sources if s not in _cache]
    if missing:
        with ThreadPoolExecutor(max_workers=len(missing)) as pool:
            found = dict(zip(missing, pool.map(_collect_isolated, missing), strict=True))
        with _cache_lock:
            for source, chunks in found.items():
                _cache.setdefault(source, chunks)
    with _cache_lock:
        return {s: _cache[s] for s in sources}


def collect_source_documents(source: str) -> list[str]:
    """All candidate chunks of one source, exact duplicates dropped, in a stable order.

    The order follows the source's own structure (sorted modules, names, services, topics), so
    it depends only on the installed versions. The text is collected in a fresh interpreter (see
    `_collect_isolated`) and cached per process.

    Raises:
        ValueError: `source` is not one of `DEMO_SOURCES`.
        RuntimeError: the collecting subprocess failed.
    """
    if source not in _SOURCE_GROUPS:
        raise ValueError(f"unknown demo source {source!r}; choose from {', '.join(DEMO_SOURCES)}")
    return list(_collect_many([source])[source])


# --------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------


def _versions(sources: Sequence[str]) -> dict[str, str]:
    versions = {"python": platform.python_version()}
    packages = sorted({p for s in sources for p in _SOURCE_PACKAGES[s]} | set(_WRITER_PACKAGES))
    for package in packages:
        versions[package] = importlib.metadata.version(package)
    return versions


def _stable_int(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to a temporary file beside `path`, then rename it over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes the file private; the corpus is for reading
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _parquet_bytes(rows: list[tuple[str, str, str]]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "doc_id": pa.array([r[0] for r in rows], pa.string()),
            "text": pa.array([r[1] for r in rows], pa.string()),
            "source": pa.array([r[2] for r in rows], pa.string()),
        }
    )
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def _jsonl_bytes(records: Iterable[dict[str, str]]) -> bytes:
    lines = [json.dumps(r, ensure_ascii=False) + "\n" for r in records]
    return "".join(lines).encode("utf-8")


def _canonical_sources(sources: Sequence[str] | None) -> list[str]:
    if sources is None:
        return list(DEMO_SOURCES)
    if isinstance(sources, str):
        sources = [sources]
    unknown = [s for s in sources if s not in DEMO_SOURCES]
    if unknown:
        raise ValueError(
            f"unknown demo source(s) {', '.join(map(repr, unknown))}; "
            f"choose from {', '.join(DEMO_SOURCES)}"
        )
    chosen = [s for s in DEMO_SOURCES if s in set(sources)]
    if not chosen:
        raise ValueError("sources is empty; pass None for all demo sources")
    return chosen


def _read_manifest(root: Path) -> dict[str, Any] | None:
    path = root / "manifest.json"
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return manifest if isinstance(manifest, dict) else {}


def _is_complete(root: Path, manifest: dict[str, Any]) -> bool:
    """Whether every file the manifest lists is there with its recorded checksum."""
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        return False
    for rel, entry in files.items():
        path = root / rel
        try:
            if path.stat().st_size != entry["bytes"] or _sha256(path) != entry["sha256"]:
                return False
        except (OSError, KeyError, TypeError):
            return False
    return True


def _describe_difference(
    existing: dict[str, Any], params: dict[str, Any], versions: dict[str, str]
) -> str:
    old_params, old_versions = existing.get("params"), existing.get("versions")
    if not isinstance(old_params, dict) or not isinstance(old_versions, dict):
        return "its manifest.json is unreadable or not a demo corpus manifest"
    changes = [
        f"{key}: {old.get(key)!r} there, {new.get(key)!r} now"
        for old, new in ((old_params, params), (old_versions, versions))
        for key in sorted(set(old) | set(new))
        if old.get(key) != new.get(key)
    ]
    return "; ".join(changes)


def _info_from_manifest(root: Path, manifest: dict[str, Any]) -> DemoCorpusInfo:
    return DemoCorpusInfo(
        root=root,
        shards=[root / s["path"] for s in manifest["shards"]],
        targets={s: root / t["txt"] for s, t in manifest["targets"].items()},
        n_documents=int(manifest["n_documents"]),
        per_source={s: int(c["corpus"]) for s, c in manifest["per_source"].items()},
    )


_SHARD_NAME = re.compile(r"shard-\d{3,}\.(?:parquet|jsonl)")


def _remove_stale(root: Path, keep: set[str]) -> None:
    """Remove shard and target files of an earlier build that this build does not write."""
    corpus = root / "corpus"
    if corpus.is_dir():
        for path in corpus.iterdir():
            if _SHARD_NAME.fullmatch(path.name) and f"corpus/{path.name}" not in keep:
                path.unlink(missing_ok=True)
    targets = root / "targets"
    if targets.is_dir():
        for source in DEMO_SOURCES:
            for suffix in (".jsonl", ".txt"):
                rel = f"targets/{source}{suffix}"
                if rel not in keep:
                    (root / rel).unlink(missing_ok=True)


@dataclass(frozen=True)
class SourceSplit:
    """Each source's chunks split into corpus rows and held-out target texts."""

    rows: list[tuple[str, str, str]]
    """(doc_id, text, source) of the corpus, grouped by source, in each source's order."""
    heldout: dict[str, list[str]]
    per_source: dict[str, dict[str, int]]


def split_sources(
    collected: Mapping[str, Sequence[str]],
    sources: Sequence[str],
    docs_per_source: int,
    heldout_per_source: int,
    seed: int,
    kind: str,
) -> SourceSplit:
    """Draw each source's corpus and held-out chunks without replacement (seeded per source).

    A chunk that an earlier source in `sources` also has is not a candidate of a later one.
    A source with fewer chunks than requested gives what it has (both parts shrunk in
    proportion), as long as that is at least half the request; `kind` names the corpus in the
    messages.

    Raises:
        ValueError: a source has fewer than half the chunks requested.
    """
    want = int(docs_per_source) + int(heldout_per_source)
    rows: list[tuple[str, str, str]] = []
    heldout: dict[str, list[str]] = {}
    per_source: dict[str, dict[str, int]] = {}
    seen: set[str] = set()
    for source in sources:
        candidates = [(i, t) for i, t in enumerate(collected[source]) if t not in seen]
        available = len(candidates)
        if available < MIN_FRACTION * want:
            raise ValueError(
                f"{kind} source {source!r} has only {available} chunks of "
                f"{MIN_CHARS}..{MAX_CHARS} characters, less than half of the "
                f"{want} requested (docs_per_source={docs_per_source} + "
                f"heldout_per_source={heldout_per_source}); ask for fewer documents"
            )
        n_heldout, n_corpus = int(heldout_per_source), int(docs_per_source)
        if available < want:
            n_heldout = max(1, (int(heldout_per_source) * available) // want)
            n_corpus = available - n_heldout
            logger.warning(
                "%s source %s has %d chunks, fewer than the %d requested; using %d for the "
                "corpus and %d held out",
                kind,
                source,
                available,
                want,
                n_corpus,
                n_heldout,
            )
        rng = np.random.default_rng([int(seed), _stable_int(source)])
        picked = rng.permutation(available)[: n_heldout + n_corpus]
        for pos in sorted(picked[n_heldout:].tolist()):
            index, text = candidates[pos]
            rows.append((f"{source}-{index:05d}", text, source))
        heldout[source] = [candidates[pos][1] for pos in sorted(picked[:n_heldout].tolist())]
        seen.update(t for _, t in candidates)
        per_source[source] = {"available": available, "corpus": n_corpus, "heldout": n_heldout}
    return SourceSplit(rows=rows, heldout=heldout, per_source=per_source)


def write_shards_and_targets(
    root: Path, split: SourceSplit, n_shards: int, seed: int
) -> dict[str, Any]:
    """Shuffle the rows (seeded) into `n_shards` files and write each source's targets.

    Even shards are Parquet, odd shards JSONL, each with `doc_id`, `text` and `source`; each
    source's held-out texts go to `targets/<source>.jsonl` and `.txt`. Every write is atomic.
    Returns the manifest's `shards`, `targets` and `files` entries.

    Raises:
        ValueError: more shards than rows.
    """
    rows = split.rows
    if int(n_shards) > len(rows):
        raise ValueError(f"n_shards={n_shards} is more than the {len(rows)} corpus documents")
    order = np.random.default_rng([int(seed), _stable_int("shuffle")]).permutation(len(rows))
    shuffled = [rows[i] for i in order.tolist()]
    bounds = np.linspace(0, len(shuffled), int(n_shards) + 1).round().astype(int).tolist()

    files: dict[str, dict[str, Any]] = {}
    shard_entries: list[dict[str, Any]] = []
    for k in range(int(n_shards)):
        part = shuffled[bounds[k] : bounds[k + 1]]
        if k % 2 == 0:
            rel, fmt, data = f"corpus/shard-{k:03d}.parquet", "parquet", _parquet_bytes(part)
        else:
            records = ({"doc_id": d, "text": t, "source": s} for d, t, s in part)
            rel, fmt, data = f"corpus/shard-{k:03d}.jsonl", "jsonl", _jsonl_bytes(records)
        _atomic_write(root / rel, data)
        files[rel] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        shard_entries.append({"path": rel, "format": fmt, "n_documents": len(part)})

    target_entries: dict[str, dict[str, Any]] = {}
    for source, texts in split.heldout.items():
        jsonl_rel, txt_rel = f"targets/{source}.jsonl", f"targets/{source}.txt"
        for rel, data in (
            (jsonl_rel, _jsonl_bytes({"text": t} for t in texts)),
            (txt_rel, ("\n\n".join(texts) + "\n").encode("utf-8")),
        ):
            _atomic_write(root / rel, data)
            files[rel] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        target_entries[source] = {"jsonl": jsonl_rel, "txt": txt_rel, "n_documents": len(texts)}
    return {"shards": shard_entries, "targets": target_entries, "files": files}


def write_manifest(root: Path, manifest: dict[str, Any]) -> None:
    """Write `manifest.json` last (atomically): its presence marks a complete build."""
    _atomic_write(
        root / "manifest.json",
        (json.dumps(manifest, indent=2, ensure_ascii=False) + "\n").encode("utf-8"),
    )


def build_demo_corpus(
    out_dir: str | Path,
    docs_per_source: int = 1000,
    n_shards: int = 4,
    heldout_per_source: int = 100,
    seed: int = 0,
    sources: Sequence[str] | None = None,
    overwrite: bool = False,
) -> DemoCorpusInfo:
    """Build (or reuse) the demo corpus under `out_dir`.

    From each source, `docs_per_source` chunks go to the corpus and `heldout_per_source` other
    chunks to `targets/<source>.jsonl|.txt`, drawn without replacement with a generator seeded
    by `seed` and the source name. The corpus is shuffled across sources and split into
    `n_shards` files: even shards Parquet, odd shards JSONL, each with `doc_id`, `text` and
    `source`. A source with fewer chunks than requested gives what it has (both parts shrunk in
    proportion), as long as that is at least half the request.

    If `out_dir` already holds a complete corpus built with the same parameters and package
    versions, it is returned as it is.

    Raises:
        ValueError: bad parameters; a source with too few chunks; or `out_dir` holds a corpus
            built differently (or an unreadable manifest) and `overwrite` is False.
    """
    for name, value, low in (
        ("docs_per_source", docs_per_source, 1),
        ("n_shards", n_shards, 1),
        ("heldout_per_source", heldout_per_source, 1),
        ("seed", seed, 0),
    ):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    chosen = _canonical_sources(sources)
    root = Path(out_dir).expanduser().resolve()
    params = {
        "format_version": FORMAT_VERSION,
        "docs_per_source": int(docs_per_source),
        "heldout_per_source": int(heldout_per_source),
        "n_shards": int(n_shards),
        "seed": int(seed),
        "sources": chosen,
        "min_chars": MIN_CHARS,
        "max_chars": MAX_CHARS,
        "target_chars": TARGET_CHARS,
    }
    versions = _versions(chosen)

    existing = _read_manifest(root)
    if existing is not None:
        same = existing.get("params") == params and existing.get("versions") == versions
        if same and _is_complete(root, existing):
            logger.info("demo corpus at %s is up to date; reusing it", root)
            return _info_from_manifest(root, existing)
        if not same and not overwrite:
            raise ValueError(
                f"{root} already holds a demo corpus built differently "
                f"({_describe_difference(existing, params, versions)}); pass overwrite=True "
                "to replace it, or choose another folder"
            )
        # Same parameters but incomplete (an interrupted build), or overwrite=True: rebuild.
        (root / "manifest.json").unlink(missing_ok=True)

    started = time.perf_counter()
    collected = _collect_many(chosen)
    split = split_sources(collected, chosen, docs_per_source, heldout_per_source, seed, "demo")
    written = write_shards_and_targets(root, split, n_shards, seed)
    _remove_stale(root, set(written["files"]))
    manifest = {
        "description": (
            "CLIMB demo corpus: chunks of real documentation shipped with installed packages "
            "(Python language reference topics, standard-library docstrings, botocore AWS API "
            "documentation, numpy, torch and SQLAlchemy docstrings), one source per "
            "`source` value. Corpus shards alternate Parquet and JSONL with doc_id, text and "
            "source; targets/ holds held-out chunks of each source that are not in the corpus."
        ),
        "params": params,
        "versions": versions,
        "n_documents": len(split.rows),
        "per_source": split.per_source,
        **written,
    }
    write_manifest(root, manifest)
    logger.info(
        "built demo corpus at %s: %d documents from %d sources in %.1f s",
        root,
        len(split.rows),
        len(chosen),
        time.perf_counter() - started,
    )
    return _info_from_manifest(root, manifest)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m climb_assets.lib.demo_corpus",
        description="Build the offline CLIMB demo corpus from documentation of installed packages.",
    )
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--docs-per-source", type=int, default=1000)
    parser.add_argument("--heldout-per-source", type=int, default=100)
    parser.add_argument("--n-shards", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sources", nargs="+", choices=DEMO_SOURCES, default=None)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    started = time.perf_counter()
    try:
        info = build_demo_corpus(
            args.out_dir,
            docs_per_source=args.docs_per_source,
            n_shards=args.n_shards,
            heldout_per_source=args.heldout_per_source,
            seed=args.seed,
            sources=args.sources,
            overwrite=args.overwrite,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"demo corpus: {info.root} ({time.perf_counter() - started:.1f} s)")
    print(f"  {info.n_documents} documents in {len(info.shards)} shards")
    for source, count in info.per_source.items():
        print(f"  {source:<18} {count:>6} documents, held out: {info.targets[source]}")
    for shard in info.shards:
        print(f"  shard {shard}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
