"""An embedded multi-domain byte corpus for the demo, generated procedurally from a seed.

Nothing is downloaded: every domain and target set is produced by a small generator seeded from
``(seed, name)``, so the same seed gives the same bytes on every machine.

Target tasks (held-out sets, scored by mean next-token loss):

* ``sums``    -- addition facts ``"37+58=95;"``.
* ``grammar`` -- sentences of a small English-like grammar (``"the big cat sees a dog. "``).
* ``lookup``  -- ``key>value;`` pairs of a fixed table of 32 made-up facts (the demo's "world knowledge").

Training domains, of deliberately different value for those targets (what the demo's influence
measurements show on a 2-layer model, in the order they matter):

* ``arith``   -- addition facts in the target format: useful for ``sums``.
* ``prose``   -- more sentences of the grammar: useful for ``grammar``.
* ``facts``   -- the true fact table: useful for ``lookup``.
* ``web``     -- "web pages": one of 12 fixed 30-50 character boilerplate banners (upper case and
  symbols) followed by a grammar sentence. Early, its gradient is dominated by the boilerplate, which no
  target contains; once the model has memorised the banners, only the sentence is left to learn and the
  domain helps ``grammar`` -- a domain that helps only late.
* ``noise``   -- uniformly random bytes: useless (its influence is ~0 throughout).
* ``rumours`` -- the ``lookup`` keys followed by random made-up values: the same prompts with
  conflicting answers. It teaches the format early, and becomes the most harmful domain for ``lookup``
  once the true facts are being learned.

Each domain is a ``[N, seq_len + 1]`` uint8 array of byte windows cut from a long stream of lines,
as language-model pre-training cuts documents into fixed-length chunks.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .._validation import check_int

__all__ = [
    "DOMAINS",
    "TARGETS",
    "DOMAIN_ROLES",
    "DemoCorpus",
    "build_corpus",
]

_LETTERS = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz", dtype=np.uint8)

_DET = ["the", "a", "one", "every", "that"]
_ADJ = ["big", "small", "red", "old", "quick", "quiet", "brave", "green", "tall", "sad"]
_NOUN = ["cat", "dog", "bird", "fox", "king", "girl", "boy", "tree", "ship", "horse", "child", "wolf"]
_VERB = ["sees", "likes", "finds", "helps", "hears", "follows", "meets", "wants", "keeps", "calls"]
_PREP = ["near", "under", "behind", "with", "beside"]
_ADV = ["today", "again", "slowly", "often", "now"]


def _sums_line(rng: np.random.Generator) -> str:
    a, b = (int(x) for x in rng.integers(0, 100, size=2))
    return f"{a}+{b}={a + b};"


def _noun_phrase(rng: np.random.Generator) -> str:
    words = [_DET[rng.integers(len(_DET))]]
    if rng.random() < 0.5:
        words.append(_ADJ[rng.integers(len(_ADJ))])
    words.append(_NOUN[rng.integers(len(_NOUN))])
    return " ".join(words)


def _prose_line(rng: np.random.Generator) -> str:
    parts = [_noun_phrase(rng), _VERB[rng.integers(len(_VERB))], _noun_phrase(rng)]
    r = rng.random()
    if r < 0.3:
        parts += [_PREP[rng.integers(len(_PREP))], _noun_phrase(rng)]
    elif r < 0.5:
        parts.append(_ADV[rng.integers(len(_ADV))])
    return " ".join(parts) + ". "


def _word(rng: np.random.Generator, alphabet: np.ndarray, lo: int, hi: int) -> str:
    n = int(rng.integers(lo, hi + 1))
    return alphabet[rng.integers(0, len(alphabet), size=n)].tobytes().decode("ascii")


_BOILER_CHARS = np.frombuffer(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ[]|=#/:_-<>*", dtype=np.uint8)


class _WebTemplates:
    """Fixed page boilerplate (navigation bars, banners): a few long random strings drawn once from the seed."""

    def __init__(self, seed: int, count: int = 12) -> None:
        rng = np.random.default_rng([int(seed), zlib.crc32(b"web")])
        self.templates = [
            _BOILER_CHARS[rng.integers(0, len(_BOILER_CHARS), int(rng.integers(30, 50)))].tobytes().decode("ascii")
            for _ in range(count)
        ]

    def line(self, rng: np.random.Generator) -> str:
        return self.templates[int(rng.integers(len(self.templates)))] + " " + _prose_line(rng)


_LineGen = Callable[[np.random.Generator], str]


class _FactTable:
    """A fixed table of made-up ``key>value`` facts (the demo's "world knowledge"), drawn from the seed."""

    def __init__(self, seed: int, size: int = 32) -> None:
        rng = np.random.default_rng([int(seed), zlib.crc32(b"facts")])
        keys: list[str] = []
        while len(keys) < size:
            w = _word(rng, _LETTERS, 3, 6)
            if w not in keys:
                keys.append(w)
        self.keys = keys
        self.values = [_word(rng, _LETTERS, 3, 7) for _ in range(size)]

    def true_line(self, rng: np.random.Generator) -> str:
        i = int(rng.integers(len(self.keys)))
        return f"{self.keys[i]}>{self.values[i]};"

    def rumour_line(self, rng: np.random.Generator) -> str:
        i = int(rng.integers(len(self.keys)))
        return f"{self.keys[i]}>{_word(rng, _LETTERS, 3, 7)};"


@dataclass(frozen=True)
class _World:
    facts: _FactTable
    web: _WebTemplates


@dataclass(frozen=True)
class _Source:
    name: str
    role: str
    line: Callable[[_World], _LineGen | None]  # None: random bytes


DOMAINS: tuple[_Source, ...] = (
    _Source("arith", "useful (sums)", lambda w: _sums_line),
    _Source("prose", "useful (grammar)", lambda w: _prose_line),
    _Source("facts", "useful (lookup)", lambda w: w.facts.true_line),
    _Source("web", "helps late (grammar)", lambda w: w.web.line),
    _Source("noise", "useless", lambda w: None),
    _Source("rumours", "harmful (lookup)", lambda w: w.facts.rumour_line),
)
TARGETS: tuple[_Source, ...] = (
    _Source("sums", "target", lambda w: _sums_line),
    _Source("grammar", "target", lambda w: _prose_line),
    _Source("lookup", "target", lambda w: w.facts.true_line),
)
DOMAIN_ROLES: dict[str, str] = {d.name: d.role for d in DOMAINS}


def _rng(seed: int, kind: str, name: str) -> np.random.Generator:
    key = zlib.crc32(f"{kind}/{name}".encode())
    return np.random.default_rng([int(seed), key])


def _windows(line: _LineGen | None, rng: np.random.Generator, n: int, width: int) -> np.ndarray:
    total = n * width
    if line is None:
        return rng.integers(0, 256, size=(n, width), dtype=np.uint8)
    line_fn = line
    chunks: list[str] = []
    size = 0
    while size < total + width:
        line = line_fn(rng)
        chunks.append(line)
        size += len(line)
    stream = np.frombuffer("".join(chunks).encode("latin-1"), dtype=np.uint8)
    start = int(rng.integers(0, width))  # windows start anywhere in a line, as chunked documents do
    return stream[start : start + total].reshape(n, width).copy()


@dataclass
class DemoCorpus:
    """The generated corpus.

    Attributes:
        seq_len: model context length; every row has ``seq_len + 1`` bytes (inputs and shifted labels).
        domains: training domain name -> ``[N, seq_len + 1]`` uint8 array.
        target_dev: target name -> uint8 array used to measure influence (the controller's target batches).
        target_test: target name -> uint8 array, disjoint from ``target_dev``, used only for the reported loss.
        roles: training domain name -> what the domain is meant to be (useful, harmful, ...).
    """

    seq_len: int
    domains: dict[str, np.ndarray]
    target_dev: dict[str, np.ndarray]
    target_test: dict[str, np.ndarray]
    roles: dict[str, str] = field(default_factory=dict)

    def write_text_folders(self, root: str | Path) -> dict[str, Path]:
        """Write each domain as ``root/<domain>/part0.txt`` (for ``tikmix run`` examples); returns the folders."""
        out: dict[str, Path] = {}
        for name, rows in self.domains.items():
            folder = Path(root) / name
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "part0.txt").write_bytes(rows.tobytes())
            out[name] = folder
        return out


def build_corpus(
    seed: int = 0,
    *,
    seq_len: int = 64,
    train_sequences: int = 4096,
    dev_sequences: int = 64,
    test_sequences: int = 256,
) -> DemoCorpus:
    """Generate the demo corpus deterministically from ``seed``.

    Args:
        seed: any int; the same seed gives byte-identical arrays.
        seq_len: model context length (rows have ``seq_len + 1`` bytes).
        train_sequences: rows per training domain.
        dev_sequences: rows per target used for influence.
        test_sequences: rows per target used for the reported loss.
    """
    for name, value in (
        ("seq_len", seq_len),
        ("train_sequences", train_sequences),
        ("dev_sequences", dev_sequences),
        ("test_sequences", test_sequences),
    ):
        check_int(value, name, minimum=1)
    width = seq_len + 1
    world = _World(_FactTable(seed), _WebTemplates(seed))
    domains = {
        d.name: _windows(d.line(world), _rng(seed, "train", d.name), train_sequences, width) for d in DOMAINS
    }
    dev, test = {}, {}
    for t in TARGETS:
        rows = _windows(t.line(world), _rng(seed, "target", t.name), dev_sequences + test_sequences, width)
        dev[t.name], test[t.name] = rows[:dev_sequences], rows[dev_sequences:]
    return DemoCorpus(seq_len, domains, dev, test, dict(DOMAIN_ROLES))
