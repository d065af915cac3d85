"""The admission rule for an edit's text: a principle must be short, plain advice about the task.

Small reflectors answer the edit schema with valid JSON whose text is not advice: a placeholder
(``[Your text here]``), an echo of the instructions (``(1) Add a new principle (2)``), markup or
code (``<p>The answer is 12``, ``<script class=``), talk about the edits and attempts, the answer
to the one problem it was shown, or letters that make no words. :func:`admit` decides, for one
text, whether it may become a principle; the checks run in this order and the first that fails
names the :class:`Reason`:

1. ``empty``: no text.
2. ``control characters``: C0/C1 controls other than whitespace, bidirectional and zero-width
   format characters (zero-width joiners, which some scripts need, are kept).
3. ``placeholder``: a bracketed span of any style (``[...]``, ``{...}``, ``<words with spaces>``),
   a template variable (``$name``), an ellipsis standing for text, a promise of text that never
   comes ("as follows..."), or numbered slots (``(1) ... (2)``).
4. ``echoes the instructions``: the copy guard (:mod:`espl_bench.method.copies`) finds the
   templates' own examples, sentences or lines in it.
5. ``copies a problem``: it holds a run of five words of a problem shown to the reflector
   (:class:`~espl_bench.method.copies.ProblemCopies`; a fragment of a letter-counting passage is
   words of the language but no advice). Checked only when the caller passes the problems.
6. ``markup or code``: an HTML/XML tag (closed or cut off), an entity (``&#34;``), backticks or
   fences, comment markers, an identifier (``your_input``, ``a.b(``), a leading list or heading
   marker, emphasis (``*...*``), or any of ``[]{}\\|^~`` left over.
7. ``answers one problem``: "the answer is 12" ("the answer is: 24", "the answer to this question
   is 1"), a worked equation (``7 + 6 = 13``), or a count of a named letter ("the letter 'l'
   appears only once", unless it is a condition: "if the letter e appears twice").
8. ``talks about edits or attempts``: the words of the reflection exchange (edit, principle,
   JSON, revision, reviewer, a principle id such as ``G1``, "the previous attempt", "my answer"),
   the model talking about itself or to its user ("I will", "please provide"), or about rewriting
   the prompt ("modify your original text", "this is (just) an example").
9. ``not words of the language``: fewer than :data:`MIN_WORDS` distinct words (one of them not
   short, see below), fewer than
   :data:`MIN_LETTERS` distinct letters, or under :data:`WORD_SHARE` of its lettered tokens (a lone
   letter, a symbol such as "x" or "the letter r", is not counted) with a
   ``wordfreq`` Zipf frequency of at least :data:`MIN_ZIPF` in the run's language (higher for
   tokens of one to three letters, :data:`SHORT_ZIPF`, which are mostly abbreviations), or, in an
   alphabet, words not separated by spaces (``NO;TEXT``).

The rule is a pure function of the text, the language, the templates and the problems shown. :func:`admit` judges
one edit's text (a principle); :func:`admit_prompt` judges a whole system prompt (a GEPA
candidate, written by the ``gepa`` library's own proposer) by the same rule, once the markdown
structure a prompt may use (headings, list items, bold, the empty tag pair naming an answer
format) is taken away, and sentence by sentence
for echoes, against GEPA's own reflection template as the instructions it must not echo.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources

import wordfreq

from espl_bench.method.copies import CopyGuard, ProblemCopies

MIN_ZIPF = 2.5  # a word is at least this frequent (Zipf 2.5: 3 per ten million words; "numerator" is 2.3)
# Short strings of an alphabet are mostly abbreviations ("bc", "mr", "cdl" have Zipf 3 to 5.7): a
# token of one or two letters counts as a word at Zipf 6 (to, of, be, if, us, a), of three at 4
# (sum, add, odd). Random strings of 3 letters pass 4.0 about 2% of the time, of 4 pass 2.5 about 1%.
SHORT_ZIPF = {1: 6.0, 2: 6.0, 3: 4.0}  # one letter: only outside alphabets (a lone letter is a symbol)
WORD_SHARE = 0.75  # this share of the lettered tokens must be words of the language
MIN_WORDS = 2  # distinct words of the language in one principle ("Be careful.")
MIN_LETTERS = 5  # distinct letters ("aa aaa aaaa" is not a sentence)
LANGUAGE = "en"


class Reason(enum.StrEnum):
    """Why a text is not admitted (the value is what metrics and the CLI show)."""

    EMPTY = "empty"
    CONTROL = "control characters"
    PLACEHOLDER = "placeholder"
    ECHO = "echoes the instructions"
    PROBLEM = "copies a problem"
    MARKUP = "markup or code"
    ANSWER = "answers one problem"
    META = "talks about edits or attempts"
    NOT_WORDS = "not words of the language"


def copy_guard_share(refused: Mapping[str, int]) -> int:
    """Of refusals counted by reason, the copy guard's share (``copied_edits_rejected`` in the
    metrics): echoes of the templates and placeholders."""
    return refused.get(Reason.ECHO.value, 0) + refused.get(Reason.PLACEHOLDER.value, 0)


@dataclass(frozen=True)
class Verdict:
    """The rule's decision on one text: admitted, or the reason and the part that failed it."""

    text: str
    reason: Reason | None = None
    detail: str = ""

    @property
    def admitted(self) -> bool:
        return self.reason is None

    @property
    def why(self) -> str:
        """The reason's name as metrics and the CLI show it ("admitted" when there is none)."""
        return "admitted" if self.reason is None else self.reason.value

    def describe(self) -> str:
        return "admitted" if self.reason is None else f"{self.reason.value}: {self.detail}"


_KEEP_FORMAT = {"\u200c", "\u200d"}  # zero-width (non-)joiners: Persian, Indic scripts need them
_PLACEHOLDERS = (
    re.compile(r"\[[^\[\]]*\]"),  # [Your text here], [attempt]
    re.compile(r"\{[^{}]*\}"),  # {{...}}, {your_edits}
    re.compile(r"<[^<>=/]*\s[^<>=/]*>"),  # <new principle, at most 32 words> (a tag has no spaces but attributes)
    re.compile(r"\$\w+"),  # a template variable
    re.compile(r"^\W*(\.{3}|…)\W*$"),  # an ellipsis standing for the text
    re.compile(r"\b(as\s+follows|the\s+following)\W*$", re.I),  # a promise of text that never comes
    re.compile(r"\(\s*1\s*\).*\(\s*2\s*\)|(^|\s)1[.)]\s.*\s2[.)]\s"),  # numbered slots: (1) ... (2)
)
_MARKUP = (
    re.compile(r"</?[A-Za-z][\w:.-]*(\s*/?>|\s+[^<>]*=)"),  # <p>, </b>, <br/>, <script class=
    re.compile(r"<[A-Za-z][\w:.-]*$|<[A-Za-z]\w*[_.:]\w"),  # a tag cut off: <custom_json.value
    re.compile(r"&#?\w+;"),  # an entity
    re.compile(r"`"),  # inline code or a fence
    re.compile(r"/\*|\*/|^\s*//|-->|<!--"),  # comments
    re.compile(r"\b[A-Za-z]+_\w+|\b[A-Za-z]\w*\.[A-Za-z]\w*\(|\w\(\)"),  # identifiers, calls
    re.compile(r"^\s*([-+*#>•]|\d+\.)\s*\S|^\s*[*_]"),  # a list item, heading, quote or emphasis
    re.compile(r"\*\S[^*]*\*"),  # *emphasis*
    re.compile(r"[\[\]{}\\|^~]"),  # brackets and symbols no sentence needs
    re.compile(r"(?<![\s\d])[<>]|[<>](?![\s\d])"),  # angle brackets that are not comparisons
)
_ANSWER = (
    # a number or a quoted value: "the answer is 12", "the answer to this question is 1"
    re.compile(r"\banswer(?:\s+to\s+(?:this|the|that)\s+(?:question|problem|task))?\s*(?:is|was|should be|would be|=|:)"
               r"\s*:?\s*(?:-?\d|['\"]\w)", re.I),
    re.compile(r"\d\s*[-+*/×x÷]\s*-?\d[\d.]*\s*=\s*-?\d"),  # 7 + 6 = 13
    # a named letter's count ("the letter 'l' appears only once", "the letter g is 4 times"), not a condition
    re.compile(r"(?<!\bif the )(?<!\bwhen the )(?<!\bwhether the )\bletter\s+['\"]?[a-z]['\"]?\s+(?:appears?|occurs?|is)"
               r"\s+(?:only\s+|exactly\s+|just\s+|more\s+than\s+|less\s+than\s+|fewer\s+than\s+|at\s+(?:least|most)\s+)?"
               r"(?:once|twice|thrice|\d+|one|two|three|four|five|six|seven|eight|nine|ten)\b", re.I),
)
_META = re.compile(
    r"\b(edit(s|ed|ing)?|principles?|json|revisions?|reviewers?|G\d+)\b"
    r"|\b(the|this|that|these|previous|last|my)\s+attempts?\b"  # "your answer/attempt" is advice's own wording
    r"|\b(previous|last|my)\s+(answer|response|reply)\b"
    r"|\bI(\s+(will|am|have|would)|'(m|ll|ve|d))\b|\bplease\s+provide\b"
    # rewriting the prompt itself, or showing how to ("an example of how to modify your original text")
    r"|\b(modify|modifying|rewrite|rewriting|change|changing|update|updating|revise|revising|improve|improving)"
    r"\s+(your|the|this|my)\s+(original\s+)?(text|prompt|instructions?|wording)\b"
    r"|\b(this|here)\s+is\s+(just\s+)?(an?|one)\s+(\w+\s+)?example\b", re.I)


def admit(text: str, *, language: str = LANGUAGE, guard: CopyGuard | None = None,
          problems: ProblemCopies | None = None) -> Verdict:
    """Whether ``text`` may become a principle, under the rule of the module docstring.

    ``guard`` is the copy guard of the run's templates (default: the packaged templates);
    ``problems`` the problems the reflector was shown (None: not checked);
    ``language`` a ``wordfreq`` language code. Raises ``ValueError`` for a language ``wordfreq``
    has no word list for.
    """
    if language not in languages():
        raise ValueError(f"no word list for language {language!r}; fix: one of {', '.join(languages())}")
    stripped = text.strip()
    if not stripped:
        return Verdict(text, Reason.EMPTY, "no text")
    for char in stripped:
        category = unicodedata.category(char)
        if (category in ("Cc", "Cs", "Co", "Cn") and not char.isspace()) or (category == "Cf" and char not in _KEEP_FORMAT):
            return Verdict(text, Reason.CONTROL, f"U+{ord(char):04X}")
    if found := _first(_PLACEHOLDERS, stripped):
        return Verdict(text, Reason.PLACEHOLDER, found)
    if (guard or _packaged_guard()).copies(stripped):
        return Verdict(text, Reason.ECHO, "copies a line, sentence or example of the reflection prompts")
    if problems is not None and (copied := problems.copied(stripped)):
        return Verdict(text, Reason.PROBLEM, repr(copied))
    for reason, patterns in ((Reason.MARKUP, _MARKUP), (Reason.ANSWER, _ANSWER), (Reason.META, (_META,))):
        if found := _first(patterns, stripped):
            return Verdict(text, reason, found)
    return _words(text, stripped, language)


_STRUCTURE = re.compile(r"^[ \t]*(#{1,6}[ \t]+|[-+*•][ \t]+|\d{1,2}[.)][ \t]+|>[ \t]*)", re.M)
_FORMAT_TAGS = re.compile(r"<([A-Za-z]\w*)>\s*</\1>")  # names an answer format: "inside <answer></answer> tags"
_SENTENCES = re.compile(r"(?<=[.:;!?])\s+|\n+")
_BOLD = re.compile(r"\*\*([^*\n]+)\*\*|__([^_\n]+)__")


def admit_prompt(text: str, *, language: str = LANGUAGE, guard: CopyGuard | None = None,
                 problems: ProblemCopies | None = None) -> Verdict:
    """Whether a whole system prompt may be a candidate: :func:`admit` on its text with each line's
    heading, list or quote marker and any bold markers removed (a prompt may be structured; a
    principle is one plain sentence) and an empty tag pair read as the name of an answer format
    (``<answer></answer>``), then each sentence of four words or more checked for an
    echo of the instructions. The verdict carries the prompt as given."""
    plain = _BOLD.sub(lambda m: m.group(1) or m.group(2), _STRUCTURE.sub("", text))
    plain = _FORMAT_TAGS.sub(r"\1", plain)
    verdict = admit(plain, language=language, guard=guard, problems=problems)
    if verdict.admitted:  # a prompt echoes its instructions sentence by sentence, not as a whole
        guard = guard or _packaged_guard()
        echoed = next((s for s in _SENTENCES.split(plain) if len(s.split()) >= 4 and guard.copies(s)), None)
        if echoed is not None:
            verdict = Verdict(plain, Reason.ECHO, f"copies a sentence of the reflection prompt: {echoed.strip()[:60]!r}")
    return dataclasses.replace(verdict, text=text)


def _first(patterns: tuple[re.Pattern, ...], text: str) -> str:
    """The first span any of ``patterns`` finds in ``text`` (quoted for the verdict), or ''."""
    for pattern in patterns:
        if match := pattern.search(text):
            return repr(match.group(0).strip() or match.group(0))
    return ""


def _words(text: str, stripped: str, language: str) -> Verdict:
    # a lone letter of an alphabet is a symbol ("solve for x", "the letter r"), neither word nor junk
    tokens = [t for t in wordfreq.tokenize(stripped, language)
              if any(c.isalpha() for c in t) and not (len(t) == 1 and ord(t) < 0x0590)]
    known = [t for t in tokens if wordfreq.zipf_frequency(t, language) >= _least_zipf(t)]
    letters = {c for c in stripped.lower() if c.isalpha()}
    long = [t for t in known if _least_zipf(t) == MIN_ZIPF]
    if len(set(known)) < MIN_WORDS or len(letters) < MIN_LETTERS or not long:
        return Verdict(text, Reason.NOT_WORDS, f"{len(set(known))} distinct words of {language!r}, {len(long)} of "
                                               f"four letters or more, {len(letters)} distinct letters")
    if all(ord(c) < 0x0590 for t in known for c in t):  # an alphabet's words are separated by spaces ("NO;TEXT")
        spaced = [chunk for chunk in stripped.split() if set(wordfreq.tokenize(chunk, language)) & set(known)]
        if len(spaced) < MIN_WORDS:
            return Verdict(text, Reason.NOT_WORDS, f"its words are not separated by spaces: {stripped[:40]!r}")
    share = len(known) / len(tokens)
    if share < WORD_SHARE:
        unknown = [t for t in tokens if t not in known][:3]
        return Verdict(text, Reason.NOT_WORDS, f"{share:.0%} of its tokens are words of {language!r} "
                                               f"(not: {', '.join(unknown)})")
    return Verdict(text)


def _least_zipf(token: str) -> float:
    # only alphabets (Latin, Greek, Cyrillic, Armenian): in Chinese or Japanese a word of one or
    # two characters is the rule
    if len(token) in SHORT_ZIPF and all(ord(c) < 0x0590 for c in token):
        return SHORT_ZIPF[len(token)]
    return MIN_ZIPF


@functools.cache
def languages() -> tuple[str, ...]:
    """The language codes ``wordfreq`` has word lists for."""
    return tuple(sorted(wordfreq.available_languages()))


@functools.cache
def _packaged_guard() -> CopyGuard:
    root = resources.files("espl_bench.method") / "prompts"
    return CopyGuard(p.read_text(encoding="utf-8") for p in sorted(root.iterdir(), key=lambda p: p.name)
                     if p.name.endswith(".md"))
