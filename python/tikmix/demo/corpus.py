"""An embedded multi-domain byte corpus for the demo, generated procedurally from a seed.

Nothing is downloaded: every domain and target set is produced by a small generator seeded from
``(seed, name)``, so the same seed gives the same bytes on every machine.

Target tasks (held-out sets, scored by mean next-token loss):

* ``sums``   -- addition facts ``"37+58=95;"``.
* ``grammar`` -- sentences of a small English-like grammar.
* ``echo``   -- a lowercase word, ``>`` and the same word again (``"qzvk>qzvk;"``): the second half is
  predictable only by copying from the context.

Training domains, on purpose of very different value for those targets:

* ``arith``  -- addition facts in the target format (useful for ``sums``).
* ``prose``  -- more sentences of the grammar (useful for ``grammar``; its lowercase letters also help
  ``echo`` a little).
* ``caps_echo`` -- the copy task in UPPERCASE with longer words. Early in training its letters are the
  wrong alphabet for every target; once the model has the basics, the copy skill it trains is what
  ``echo`` still lacks: a domain that helps only late.
* ``noise``  -- uniformly random bytes (useless: it pulls the model toward the uniform distribution).
* ``wrong_sums`` -- the ``sums`` prompts with conflicting answers (harmful for ``sums``).

Each domain is a ``[N, seq_len + 1]`` uint8 array of byte windows cut from a long stream of lines,
as language-model pre-training cuts documents into fixed-length chunks.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = [
    "DOMAINS",
    "TARGETS",
    "DOMAIN_ROLES",
    "DemoCorpus",
    "build_corpus",
]

_LETTERS = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz", dtype=np.uint8)
_CAPS = np.frombuffer(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ", dtype=np.uint8)

_DET = ["the", "a", "one", "every", "that"]
_ADJ = ["big", "small", "red", "old", "quick", "quiet", "brave", "green", "tall", "sad"]
_NOUN = ["cat", "dog", "bird", "fox", "king", "girl", "boy", "tree", "ship", "horse", "child", "wolf"]
_VERB = ["sees", "likes", "finds", "helps", "hears", "follows", "meets", "wants", "keeps", "calls"]
_PREP = ["near", "under", "behind", "with", "beside"]
_ADV = ["today", "again", "slowly", "often", "now"]


def _sums_line(rng: np.random.Generator) -> str:
    a, b = (int(x) for x in rng.integers(0, 100, size=2))
    return f"{a}+{b}={a + b};"


def _wrong_sums_line(rng: np.random.Generator) -> str:
    # Same prompt distribution as ``sums``; the answer is a different, consistent function of the
    # operands, so the domain teaches the opposite of what the target needs.
    a, b = (int(x) for x in rng.integers(0, 100, size=2))
    return f"{a}+{b}={abs(a - b) * 3 % 197};"


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


def _echo_line(rng: np.random.Generator) -> str:
    w = _word(rng, _LETTERS, 3, 6)
    return f"{w}>{w};"


def _caps_echo_line(rng: np.random.Generator) -> str:
    w = _word(rng, _CAPS, 4, 9)
    return f"{w}>{w};"


_LineGen = Callable[[np.random.Generator], str]


@dataclass(frozen=True)
class _Source:
    name: str
    role: str
    line: _LineGen | None  # None: random bytes


DOMAINS: tuple[_Source, ...] = (
    _Source("arith", "useful (sums)", _sums_line),
    _Source("prose", "useful (prose)", _prose_line),
    _Source("caps_echo", "helps late (echo)", _caps_echo_line),
    _Source("noise", "useless", None),
    _Source("wrong_sums", "harmful (sums)", _wrong_sums_line),
)
TARGETS: tuple[_Source, ...] = (
    _Source("sums", "target", _sums_line),
    _Source("grammar", "target", _prose_line),
    _Source("echo", "target", _echo_line),
)
DOMAIN_ROLES: dict[str, str] = {d.name: d.role for d in DOMAINS}


def _rng(seed: int, kind: str, name: str) -> np.random.Generator:
    key = zlib.crc32(f"{kind}/{name}".encode())
    return np.random.default_rng([int(seed), key])


def _windows(source: _Source, rng: np.random.Generator, n: int, width: int) -> np.ndarray:
    total = n * width
    if source.line is None:
        return rng.integers(0, 256, size=(n, width), dtype=np.uint8)
    chunks: list[str] = []
    size = 0
    while size < total + width:
        line = source.line(rng)
        chunks.append(line)
        size += len(line)
    stream = np.frombuffer("".join(chunks).encode("ascii"), dtype=np.uint8)
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
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    width = seq_len + 1
    domains = {d.name: _windows(d, _rng(seed, "train", d.name), train_sequences, width) for d in DOMAINS}
    dev, test = {}, {}
    for t in TARGETS:
        rows = _windows(t, _rng(seed, "target", t.name), dev_sequences + test_sequences, width)
        dev[t.name], test[t.name] = rows[:dev_sequences], rows[dev_sequences:]
    return DemoCorpus(seq_len, domains, dev, test, dict(DOMAIN_ROLES))
