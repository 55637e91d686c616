"""Lexical transformations on WordNet: synonym, antonym and hypernym word swaps.

The negatives stage perturbs a correct rationale into a plausible-looking wrong one (an antonym flips a
claim, a hypernym blurs it, a synonym changes the surface only). TextAttack offers such swaps but cannot
be installed beside transformers 5 and downloads data at import, so they are implemented here directly
on nltk's WordNet reader, behind the small `Transformation` protocol that a TextAttack-backed class
could implement later.

Offline by construction: nothing is ever downloaded; `load_wordnet` adds
``engines.assets.nltk_data_dir()`` to ``nltk.data.path`` and fails with one line naming the install
command when the corpus is absent. Part of speech comes from nltk's tagger only when its data is
already installed; otherwise from WordNet itself: the part of speech whose senses of the word are the
most frequent in WordNet's sense-tagged counts (``Lemma.count``), ties broken by suffix rules.
Stop words, short words, capitalised words inside a sentence (names), all-caps tokens (acronyms, option
letters) and any caller-protected word are never changed.
"""

from __future__ import annotations

import functools
import logging
import random
import re
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

log = logging.getLogger(__name__)

SwapKind = Literal["synonym", "antonym", "hypernym"]

STOP_WORDS = frozenset((
    "a", "about", "above", "after", "again", "against", "all", "also", "am", "an", "and", "any", "are",
    "aren't", "as", "at", "be", "because", "been", "before", "being", "below", "between", "both", "but",
    "by", "can", "can't", "cannot", "could", "couldn't", "did", "didn't", "do", "does", "doesn't", "doing",
    "don't", "down", "during", "each", "either", "else", "ever", "few", "for", "from", "further", "had",
    "hadn't", "has", "hasn't", "have", "haven't", "having", "he", "her", "here", "hers", "herself", "him",
    "himself", "his", "how", "however", "i", "if", "in", "into", "is", "isn't", "it", "it's", "its",
    "itself", "just", "least", "less", "let", "many", "may", "me", "might", "more", "most", "must",
    "mustn't", "my", "myself", "neither", "never", "no", "nor", "not", "now", "of", "off", "on", "once",
    "only", "or", "other", "ought", "our", "ours", "ourselves", "out", "over", "own", "per", "rather",
    "same", "shall", "shan't", "she", "should", "shouldn't", "since", "so", "some", "such", "than", "that",
    "that's", "the", "their", "theirs", "them", "themselves", "then", "there", "these", "they", "this",
    "those", "though", "through", "thus", "to", "too", "under", "until", "up", "upon", "us", "very", "was",
    "wasn't", "we", "were", "weren't", "what", "when", "where", "whether", "which", "while", "who", "whom",
    "whose", "why", "will", "with", "within", "without", "won't", "would", "wouldn't", "yet", "you", "your",
    "yours", "yourself", "yourselves", "answer", "option", "options", "question", "reasoning", "therefore",
    "hence", "true", "false", "yes"
))
"""Function words, negations and the words that carry the answer format; never swapped."""

_WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)?")
_SENTENCE_END = re.compile(r"[.!?:\n]\s*$")
_POS_ORDER = ("n", "v", "a", "r")


class WordNetUnavailable(RuntimeError):
    """The WordNet corpus is not installed where nltk looks; the message names the install command."""


@runtime_checkable
class Transformation(Protocol):
    """A text perturbation: candidates differing from ``text``, possibly none; seeded by ``rng``."""

    name: str

    def transform(self, text: str, rng: random.Random) -> list[str]: ...


@functools.lru_cache(maxsize=1)
def load_wordnet():
    """nltk's WordNet reader over ``engines.assets.nltk_data_dir()`` (never downloads)."""
    import nltk

    from engines import assets

    data_dir = str(assets.nltk_data_dir())
    if data_dir not in nltk.data.path:
        nltk.data.path.insert(0, data_dir)
    try:
        nltk.data.find("corpora/wordnet")
    except LookupError:
        raise WordNetUnavailable(f"WordNet not found under {data_dir}; run `unisd assets install` "
                                 "(needs the Debian packages wordnet-base and wordnet-sense-index)") from None
    from nltk.corpus import wordnet

    wordnet.ensure_loaded()
    return wordnet


@functools.lru_cache(maxsize=1)
def _tagger_available() -> bool:
    import nltk

    load_wordnet()  # makes sure our data dir is on the path
    for name in ("taggers/averaged_perceptron_tagger_eng", "taggers/averaged_perceptron_tagger"):
        try:
            nltk.data.find(name)
            return True
        except LookupError:
            continue
    return False


_PENN_TO_WN = {"N": "n", "V": "v", "J": "a", "R": "r"}


def tag_words(words: list[str]) -> list[str | None]:
    """WordNet POS (n/v/a/r or None) per word: nltk's tagger when installed, else `guess_pos`."""
    if _tagger_available():
        import nltk

        try:
            return [_PENN_TO_WN.get(tag[:1]) for _, tag in nltk.pos_tag(words)]
        except LookupError:  # tagger files present but incomplete
            pass
    return [guess_pos(w) for w in words]


@functools.lru_cache(maxsize=65536)
def guess_pos(word: str) -> str | None:
    """The WordNet POS of ``word`` whose senses are most frequent (sense-tagged counts), else suffix rules."""
    wn = load_wordnet()
    lower = word.lower()
    scores: dict[str, int] = {}
    for pos in _POS_ORDER:
        base = wn.morphy(lower, pos)
        if base is None:
            continue
        synsets = wn.synsets(base, pos)
        count = sum(lem.count() for s in synsets for lem in s.lemmas() if lem.name().lower() == base)
        scores[pos] = count * 1000 + len(synsets)
    if not scores:
        return None
    best = max(scores.values())
    tied = [p for p in _POS_ORDER if scores.get(p) == best]
    if len(tied) == 1:
        return tied[0]
    hint = _suffix_pos(lower)
    return hint if hint in tied else tied[0]


def _suffix_pos(word: str) -> str:
    if word.endswith("ly"):
        return "r"
    if word.endswith(("ing", "ed", "ize", "ise", "ate")):
        return "v"
    if word.endswith(("ous", "ful", "ive", "able", "ible", "al", "ic", "less")):
        return "a"
    return "n"


def _lemma_words(name: str) -> str:
    return name.replace("_", " ")


@functools.lru_cache(maxsize=65536)
def replacements(word: str, pos: str, kind: SwapKind) -> tuple[str, ...]:
    """Base-form replacement candidates for ``word`` (lower case) as ``pos``, most frequent sense first."""
    wn = load_wordnet()
    base = wn.morphy(word, pos)
    if base is None:
        return ()
    synsets = wn.synsets(base, pos)
    out: list[str] = []
    if kind == "synonym":
        for s in synsets[:2]:
            out += [lem.name() for lem in s.lemmas()]
    elif kind == "antonym":
        for s in synsets:
            for lem in s.lemmas():
                if lem.name().lower() == base:
                    out += [a.name() for a in lem.antonyms()]
        if not out and pos in ("a", "s"):  # satellite adjectives: antonyms of the head adjective
            for s in synsets[:2]:
                for head in s.similar_tos():
                    out += [a.name() for lem in head.lemmas() for a in lem.antonyms()]
    else:
        for s in synsets[:1]:
            for h in s.hypernyms() + s.instance_hypernyms():
                out += [lem.name() for lem in h.lemmas()]
    seen, result = {base, word}, []
    for name in out:
        text = _lemma_words(name)
        if text.lower() not in seen and text.replace(" ", "").replace("-", "").isalpha():
            seen.add(text.lower())
            result.append(text)
    return tuple(result)


@functools.lru_cache(maxsize=65536)
def _is_name(word: str) -> bool:
    """True when WordNet's most frequent sense of ``word`` is an instance (Paris, Newton): a name."""
    synsets = load_wordnet().synsets(word)
    return bool(synsets) and bool(synsets[0].instance_hypernyms())


def _pluralise(word: str) -> str:
    if word.endswith(("s", "x", "z", "ch", "sh")):
        return word + "es"
    if len(word) > 1 and word.endswith("y") and word[-2] not in "aeiou":
        return word[:-1] + "ies"
    return word + "s"


def _verb_form(word: str, suffix: str) -> str:
    if suffix == "s":
        return word + "es" if word.endswith("o") else _pluralise(word)
    stem = word[:-1] if word.endswith("e") and len(word) > 2 else word
    return stem + suffix


@functools.lru_cache(maxsize=65536)
def _degree(word: str) -> str:
    """"er"/"est" when ``word`` is the comparative/superlative of an adjective (higher, biggest), else ""."""
    wn = load_wordnet()
    for suffix in ("est", "er"):
        if not word.endswith(suffix) or len(word) <= len(suffix) + 2:
            continue
        stem = word[:-len(suffix)]
        stems = [stem, stem + "e", stem[:-1] + "y" if stem.endswith("i") else ""]
        if stem[-1] == stem[-2]:
            stems.append(stem[:-1])
        if any(s and wn.synsets(s, "a") for s in stems):
            return suffix
    return ""


def inflect_like(original: str, base: str, replacement: str, pos: str) -> str:
    """Give ``replacement`` (a base form) the inflection and capitalisation ``original`` had."""
    low = original.lower()
    words = replacement.split(" ")
    if low != base:
        if pos == "n" and low.endswith("s"):
            words[-1] = _pluralise(words[-1])
        elif pos == "v":
            for suffix in ("ing", "ed", "s"):
                if low.endswith(suffix):
                    words[0] = _verb_form(words[0], suffix)
                    break
    if pos in ("a", "r") and len(words) == 1:
        degree = _degree(low)
        if degree and not words[0].endswith(degree):
            words[0] = _verb_form(words[0], degree)
    out = " ".join(words)
    if original[:1].isupper():
        out = out[:1].upper() + out[1:]
    return out


@dataclass(frozen=True)
class WordNetSwap:
    """Swap up to ``max_swaps`` content words for a WordNet synonym, antonym or hypernym."""

    kind: SwapKind = "synonym"
    """Which WordNet relation supplies the replacement."""
    max_swaps: int = 1
    """Words changed per candidate (antonyms: keep 1, two flips may cancel)."""
    num_candidates: int = 1
    """Distinct perturbed texts to return at most."""
    min_word_length: int = 3
    """Shorter words are never changed."""
    protected: frozenset[str] = frozenset()
    """Extra words (lower case, matched as written or by base form) never changed, e.g. option texts."""

    def __post_init__(self) -> None:
        if self.kind not in ("synonym", "antonym", "hypernym"):
            raise ValueError(f"WordNetSwap.kind must be synonym, antonym or hypernym, got {self.kind!r}")
        if self.max_swaps < 1 or self.num_candidates < 1:
            raise ValueError("WordNetSwap: max_swaps and num_candidates must be >= 1")

    @property
    def name(self) -> str:
        return f"wordnet_{self.kind}"

    def transform(self, text: str, rng: random.Random) -> list[str]:
        sites = self.sites(text)
        if not sites:
            return []
        out: list[str] = []
        for _ in range(self.num_candidates * 4):
            chosen = sorted(rng.sample(range(len(sites)), min(self.max_swaps, len(sites))))
            new, last = [], 0
            for i in chosen:
                start, end, options = sites[i]
                new += [text[last:start], rng.choice(options)]
                last = end
            candidate = "".join(new) + text[last:]
            if candidate != text and candidate not in out:
                out.append(candidate)
            if len(out) == self.num_candidates:
                break
        return out

    def sites(self, text: str) -> list[tuple[int, int, tuple[str, ...]]]:
        """(start, end, inflected replacements) for every word this swap may change, in text order."""
        matches = [m for m in _WORD.finditer(text) if self._eligible(text, m)]
        if not matches:
            return []
        wn = load_wordnet()
        tags = tag_words([m[0] for m in matches])
        sites = []
        for m, pos in zip(matches, tags):
            if pos is None:
                continue
            low = m[0].lower()
            if m[0][0].isupper() and _is_name(low):
                continue
            base = wn.morphy(low, pos) or low
            if base in self.protected:
                continue
            options = tuple(inflect_like(m[0], base, r, pos) for r in replacements(low, pos, self.kind))
            options = tuple(o for o in options if o.lower() != low)
            single = tuple(o for o in options if " " not in o)
            options = single or options  # one-word replacements read more naturally
            if options:
                sites.append((m.start(), m.end(), options))
        return sites

    def _eligible(self, text: str, m: re.Match) -> bool:
        word = m[0]
        low = word.lower()
        if len(word) < self.min_word_length or low in STOP_WORDS or low in self.protected:
            return False
        if word.isupper():
            return False
        if word[0].isupper() and m.start() > 0 and not _SENTENCE_END.search(text[:m.start()]):
            return False  # a capitalised word inside a sentence: most likely a name
        before = text[m.start() - 1] if m.start() else " "
        after = text[m.end()] if m.end() < len(text) else " "
        # parts of identifiers, attributes and calls (snake_case, obj.attr, f(...), x2) stay as they are
        return before not in "_.$" and not before.isdigit() and after not in "_(" and not after.isdigit()


def make_swaps(kinds: tuple[SwapKind, ...], max_swaps: int = 1,
               protected: frozenset[str] = frozenset()) -> list[WordNetSwap]:
    """One `WordNetSwap` per kind, sharing the swap budget and the protected words."""
    return [WordNetSwap(kind=k, max_swaps=max_swaps if k != "antonym" else 1, protected=protected)
            for k in kinds]
