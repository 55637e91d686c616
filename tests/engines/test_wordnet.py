"""WordNet swaps: offline loading, stop-word and name protection, inflection, determinism."""

from __future__ import annotations

import random
import re
from collections import Counter

import nltk
import pytest

from engines import assets
from engines.wordnet import (
    STOP_WORDS,
    Transformation,
    WordNetSwap,
    guess_pos,
    inflect_like,
    load_wordnet,
    make_swaps,
    replacements,
)

TEXT = ("The enzyme rapidly increases the reaction rate because a higher temperature makes the "
        "molecules move faster, and it is not used up in the reaction.")


@pytest.fixture(scope="module", autouse=True)
def no_download(request):
    """Any call to nltk.download during these tests is a failure."""
    original = nltk.download

    def forbidden(*args, **kwargs):
        raise AssertionError("nltk.download must never be called")

    nltk.download = forbidden
    yield
    nltk.download = original


def _words(text: str) -> list[str]:
    return re.findall(r"[A-Za-z']+", text)


def test_wordnet_loads_from_the_asset_dir():
    wn = load_wordnet()
    assert str(assets.nltk_data_dir()) in nltk.data.path
    assert wn.synsets("increase")


@pytest.mark.parametrize("kind", ["synonym", "antonym", "hypernym"])
def test_swaps_change_text_but_keep_stop_words(kind):
    swap = WordNetSwap(kind=kind, max_swaps=2, num_candidates=3)
    out = swap.transform(TEXT, random.Random(0))
    assert out and all(c != TEXT for c in out)
    stops = Counter(w.lower() for w in _words(TEXT) if w.lower() in STOP_WORDS)
    for cand in out:
        kept = Counter(w.lower() for w in _words(cand) if w.lower() in STOP_WORDS)
        assert not stops - kept  # every stop word of the original is still there
        changed = [a for a, b in zip(_words(TEXT), _words(cand)) if a != b]
        assert changed and all(w.lower() not in STOP_WORDS for w in changed[:1])


def test_antonym_flips_a_claim():
    swap = WordNetSwap(kind="antonym", num_candidates=10)
    out = swap.transform(TEXT, random.Random(1))
    assert any("decreases" in c for c in out)
    assert any("slower" in c for c in out) or any("lower" in c for c in out)  # comparatives keep their degree


def test_transform_is_seeded():
    swap = WordNetSwap(kind="hypernym", max_swaps=2, num_candidates=2)
    assert swap.transform(TEXT, random.Random(7)) == swap.transform(TEXT, random.Random(7))


def test_protected_names_acronyms_and_identifiers_are_kept():
    text = "Then Newton used DNA samples and called compute_rate(x) with the sample."
    swap = WordNetSwap(kind="hypernym", max_swaps=5, num_candidates=5, protected=frozenset({"sample"}))
    sites = {text[s:e] for s, e, _ in swap.sites(text)}
    assert "Newton" not in sites and "DNA" not in sites and "compute_rate" not in sites and "rate" not in sites
    assert "sample" not in sites and "samples" not in sites  # protected (exact lower-case form)


def test_nothing_to_swap_gives_no_candidates():
    assert WordNetSwap(kind="antonym").transform("It is 42 and not the other.", random.Random(0)) == []


def test_pos_guess_uses_wordnet_counts():
    assert guess_pos("increases") == "v"
    assert guess_pos("molecules") == "n"
    assert guess_pos("higher") == "a"
    assert guess_pos("xyzzyq") is None


def test_inflection_and_case():
    assert inflect_like("Increases", "increase", "decrease", "v") == "Decreases"
    assert inflect_like("cells", "cell", "compartment", "n") == "compartments"
    assert inflect_like("running", "run", "move", "v") == "moving"
    assert inflect_like("higher", "higher", "low", "a") == "lower"
    assert "decrease" in replacements("increase", "v", "antonym")


def test_protocol_and_factory():
    swaps = make_swaps(("synonym", "antonym"), max_swaps=3)
    assert [s.name for s in swaps] == ["wordnet_synonym", "wordnet_antonym"]
    assert swaps[1].max_swaps == 1  # two antonym flips could cancel each other
    assert all(isinstance(s, Transformation) for s in swaps)  # runtime-checkable shape
    with pytest.raises(ValueError, match="kind"):
        WordNetSwap(kind="meronym")  # type: ignore[arg-type]
