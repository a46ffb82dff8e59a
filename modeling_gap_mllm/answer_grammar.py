"""The grammar of each task's answer: what constrained decoding lets the model write, in GBNF as llguidance reads it
(`llguidance.grammar_from("grammar", ...)`: the `generate` path and vLLM's `guidance` backend).

Each grammar is the language of the task's serialiser (target_format.py), built from the same named pieces
(keys, separators, the detection fence), and admits only what a reader accepts as an answer of its task:

    detection         ```json\\n[\\n\\t{"label": "couch", "bbox_3d": [9 numbers]},\\n ... \\n]```   (0 to N entries)
    grounding         {"bbox_3d": [9 numbers]}                 (stages 2 and the one-call pipeline)
    grounding_stage1  {"frame": k}                             (k: one of the views' indices when their number is known)
    reconstruction    {"pointmap": [x, y, z], "label": "..."}  (the label may be left out, as the serialiser does)
    captioning        prose: sentences of words (`caption_grammar`), never another task's syntax
    spatial_qa        one of the option letters the question offers, else a number (a question that names a
                      letter twice or numbers its options is refused: `options_problem`)

A number is what `json.dumps(round(v, 2))` writes: an optional minus, 1-2 integer digits without a leading zero,
a point, 1-2 decimals (`0.44`, `-0.0`, `12.5`; up to ±99.99 metres or radians: a room); a box's sizes (entries 3-5)
have no minus (`output_parsing.box_numbers` refuses a negative size) except `-0.0`, which the serialiser writes for a
size of -0.0. A label (detection's, reconstruction's) is a name: words of letters and digits that start with a
letter, joined by single spaces, hyphens or apostrophes (`night stand`, `l-shaped sofa`), 1-32 characters, so never
a number, a bracket or a fragment of JSON. The grammar does not restrict labels to a category list: a model's
categories are not recorded in its folder (the real model's are the open vocabulary of its training data).

Length. Every grammar is built for a token budget (`max_tokens`: the task's `max_new_tokens`, or the caller's). A
token is at least one byte of text, so an answer of at most `max_tokens` bytes ends within the budget whatever the
tokenizer: the fixed-size answers fit their tasks' budgets (`answer_bytes`). A detection answer is a list that a
byte bound would cut short (Qwen's tokenizer spends 5-6 tokens on a number, fewer than its bytes), so it is
bounded by tokens where the decoder counts them: `generate`'s logits processor (answer_grammar_processor.py) decodes
inside the list without a bound (`DETECTION_LIST`) and, once the tokens left are what one more entry and the close
can take, lets it begin no further entry, so the answer ends well-formed and holds as many entries as the budget
allows (with a real-size tokenizer, 18 entries of a room in detection's 1,280 tokens: tests/test_answer_meaning.py).
An engine that cannot count tokens (vLLM's structured outputs) gets `detection_grammar`, bounded in bytes:
`detection_entries(max_tokens)` entries (9 in 1,280 tokens). A caption ends on sentence punctuation, or at the budget
(a caption cut short is still prose).

The grammars are plain text (no torch, no engine): the registry (`TaskSpec.grammar`, `TaskSpec.entry_list`) holds
them, the `generate` logits processor compiles them (answer_grammar_processor.py), and a vLLM request carries them as
`structured_outputs.grammar` (serving/): one definition per task on every path.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass

from .target_format import (
    BOX_KEY,
    DETECTION_CLOSE,
    DETECTION_INDENT,
    DETECTION_LINE_END,
    DETECTION_OPEN,
    FRAME_KEY,
    ITEM_SEPARATOR,
    KEY_SEPARATOR,
    LABEL_KEY,
    POINTMAP_KEY,
    POINTMAP_LABEL_KEY,
)

MAX_LABEL_CHARS = 32
MAX_INTEGER_DIGITS = 2  # |value| < 100 (metres, radians)
MAX_DECIMALS = 2  # target_format.DEFAULT_DECIMALS: what the targets print
MAX_FRAME_DIGITS = 3
BOX_VALUES = 9
MAX_WORD_LETTERS = 20  # a caption's word: English words are shorter; a longer run of letters is no word
MAX_CAPTION_NUMBER_DIGITS = 4  # a caption's number ("1.5 meters", "2 chairs"): 1-4 digits, 0-2 decimals
SENTENCE_ENDS = ".!?"
CLAUSE_MARKS = ",;"  # no colon: "word: value" is the key-value shape of the structured answers, which prose never needs


# The engine that reads these grammars (the `generate` logits processor, answer_grammar_processor.py; vLLM's
# `guidance` backend) and the version verified here; setup.py's GRAMMAR_ENGINE is the same pin. Named here, in a
# module without torch, so the commands refuse at once when it is missing (cli/early_checks.py).
ENGINE_MODULE = "llguidance"
ENGINE_REQUIREMENT = "llguidance==1.9.1"


def engine_missing() -> str | None:
    """The one line saying that constrained decoding needs the grammar engine and how to install it, when it is not
    installed (looked up, not imported); else None."""
    import importlib.util

    if importlib.util.find_spec(ENGINE_MODULE) is not None:
        return None
    return (f"constrained decoding needs {ENGINE_MODULE}, which is not installed: pip install '{ENGINE_REQUIREMENT}' "
            "(a plain pip install -e . brings it), or decode freely (--free; evaluate: leave out --constrained)")


def literal(text: str) -> str:
    """`text` as an EBNF string literal (quotes, backslashes, tabs and line breaks escaped)."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
    return f'"{escaped}"'


def grammar_characters(grammar: str) -> list[str]:
    """Every character an answer of a grammar (GBNF as this module writes it: `literal`'s escapes, classes of
    characters and ranges such as `[A-Za-z0-9]` or `[ '-]`) may write, sorted: the characters of its string literals
    and of its classes. What the tokenizer must be able to write for the grammar to apply (answer_grammar_processor.py
    `unwritable_character`)."""
    found, index, unescape = set(), 0, {"n": "\n", "t": "\t"}
    while index < len(grammar):
        opening = grammar[index]
        if opening in "[\"":
            closing, text = "]" if opening == "[" else '"', []
            index += 1
            while grammar[index] != closing:
                if grammar[index] == "\\":
                    index += 1
                    text.append(unescape.get(grammar[index], grammar[index]))
                else:
                    text.append(grammar[index])
                index += 1
            if opening == "[":  # ranges: a '-' between two characters (a first or last '-' is itself)
                spans = [k for k in range(1, len(text) - 1) if text[k] == "-"]
                for k in spans:
                    found.update(chr(code) for code in range(ord(text[k - 1]), ord(text[k + 1]) + 1))
                text = [char for k, char in enumerate(text) if k not in spans]
            found.update(text)
        index += 1
    return sorted(found)


def _key(name: str) -> str:
    """A quoted dict key and the key separator: `"bbox_3d": ` as one literal."""
    return literal(f'"{name}"{KEY_SEPARATOR}')


def _name_rules(max_chars: int) -> str:
    """`name`: 1 to `max_chars` characters of words of letters and digits, the first starting with a letter, each
    joined to the next by one space, hyphen or apostrophe. The length bound is counted by the rule names: `name_k`
    is what may follow with `k` characters left (a joint and the character after it are written together, so a name
    never ends on a joint)."""
    rules = [f"name ::= [A-Za-z] name_{max_chars - 1}"]
    for left in range(max_chars - 1, -1, -1):
        options = ['""']
        if left >= 1:
            options.append(f"[A-Za-z0-9] name_{left - 1}")
        if left >= 2:
            options.append(f"[ '-] [A-Za-z0-9] name_{left - 2}")  # a class's last '-' is literal: no escape
        rules.append(f"name_{left} ::= {' | '.join(options)}")
    return "\n".join(rules) + "\n"


# Shared rules: the number forms of every answer and the label string.
_UNSIGNED = f'("0" | [1-9] [0-9]{{0,{MAX_INTEGER_DIGITS - 1}}}) "." [0-9]{{1,{MAX_DECIMALS}}}'
_COMMON_RULES = (
    f'number ::= "-"? unsigned\n'
    f"unsigned ::= {_UNSIGNED}\n"
    f'size ::= unsigned | "-0.0"\n'
    f'label ::= "\\"" name "\\""\n' + _name_rules(MAX_LABEL_CHARS)
)
_SEP = literal(ITEM_SEPARATOR)


def _box_rule() -> str:
    """`[cx, cy, cz, sx, sy, sz, yaw, pitch, roll]`: sizes without a minus."""
    kinds = ["number"] * 3 + ["size"] * 3 + ["number"] * 3
    return f'box ::= "[" {f" {_SEP} ".join(kinds)} "]"\n'


# the longest text of each piece, in bytes (all ASCII): what bounds an answer's length in tokens
_NUMBER_BYTES = 1 + MAX_INTEGER_DIGITS + 1 + MAX_DECIMALS  # -99.99
_BOX_BYTES = 2 + BOX_VALUES * _NUMBER_BYTES + (BOX_VALUES - 1) * len(ITEM_SEPARATOR)
_LABEL_BYTES = MAX_LABEL_CHARS + 2
_DETECTION_ENTRY_BYTES = (len(DETECTION_INDENT) + 2 + len(f'"{LABEL_KEY}"{KEY_SEPARATOR}') + _LABEL_BYTES
                          + len(ITEM_SEPARATOR) + len(f'"{BOX_KEY}"{KEY_SEPARATOR}') + _BOX_BYTES + len(DETECTION_LINE_END))
_DETECTION_LIST_END = "\n" + DETECTION_CLOSE  # after the last entry


def detection_entries(max_tokens: int) -> int:
    """How many entries a detection answer may hold so that the longest one has at most `max_tokens` bytes (the
    bound of an engine that cannot count tokens: `detection_grammar`)."""
    return max(0, (int(max_tokens) - len(DETECTION_OPEN) - len(DETECTION_CLOSE)) // _DETECTION_ENTRY_BYTES)


def answer_bytes(task_grammar) -> int | None:
    """The longest answer of a fixed-size grammar in bytes (None for detection's, bounded by `detection_entries`, and
    free text's): grounding, frame selection, reconstruction, spatial QA."""
    return {
        grounding_grammar: 2 + len(f'"{BOX_KEY}"{KEY_SEPARATOR}') + _BOX_BYTES,
        frame_selection_grammar: 2 + len(f'"{FRAME_KEY}"{KEY_SEPARATOR}') + MAX_FRAME_DIGITS,
        pointmap_grammar: (2 + len(f'"{POINTMAP_KEY}"{KEY_SEPARATOR}') + 2 + 3 * _NUMBER_BYTES + 2 * len(ITEM_SEPARATOR)
                           + len(ITEM_SEPARATOR) + len(f'"{POINTMAP_LABEL_KEY}"{KEY_SEPARATOR}') + _LABEL_BYTES),
        spatial_answer_grammar: 1 + 6 + 1 + 4,
    }.get(task_grammar)


def detection_list_grammar(entries: int | None) -> str:
    """The official detection answer (`serialize_detection`) with at most `entries` labelled boxes (None: any
    number, for a decoder that closes the list at its token budget: `EntryList`)."""
    entry = f'{literal(DETECTION_INDENT + "{")} {_key(LABEL_KEY)} label {_SEP} {_key(BOX_KEY)} box "}}"'
    # no `{0,0}` repetition for a single entry: llguidance (vLLM's guidance backend) refuses an empty range
    more = "*" if entries is None else f"{{0,{int(entries) - 1}}}" if entries > 1 else None
    repeated = f" ({literal(DETECTION_LINE_END)} entry){more}" if more else ""
    listed = f'(entry{repeated} "\\n")? ' if entries is None or entries > 0 else ""
    return (f"root ::= {literal(DETECTION_OPEN)} {listed}{literal(DETECTION_CLOSE)}\n"
            f"entry ::= {entry}\n" + _box_rule() + _COMMON_RULES)


def detection_grammar(max_tokens: int, num_frames: int | None = None, prompt: str | None = None) -> str:
    """The detection answer bounded in bytes: 0 to `detection_entries(max_tokens)` labelled boxes, so that it ends
    within `max_tokens` tokens on an engine that cannot count them (vLLM); `generate` closes `DETECTION_LIST` at its
    budget instead."""
    return detection_list_grammar(detection_entries(max_tokens))


@dataclass(frozen=True)
class EntryList:
    """A list answer that a decoder counting tokens closes at its budget (`GrammarLogitsProcessor`) instead of a bound
    in bytes: it decodes inside `grammar(None)` (no bound on the entries) until `reserve` tokens are left, then inside
    `bounded(text so far)`: no entry beyond the one it is writing or, once the list is open and between entries, one
    more. `reserve` is the most bytes that the rest of a bounded answer can take (from just after an entry: the
    separator, the longest entry and the close; the rest of an entry begun is shorter), and a token is at least a
    byte, so the answer ends well-formed within the budget, and entries begin until its last `reserve` tokens.

    Attributes:
        grammar: entries (int, or None for no bound) → the grammar (EBNF) of the list.
        opening: the text before the first entry's separator (inside it, the rest of the opening comes on top of an
            entry, so no entry may begin there).
        entry_start, entry_end: the texts that begin and end an entry, and occur nowhere else in an answer.
        reserve: bytes, as above.
    """

    grammar: Callable[[int | None], str]
    opening: str
    entry_start: str
    entry_end: str
    reserve: int

    def bounded(self, text: str) -> str:
        """The grammar of the list `text` (an answer begun inside `grammar(None)`) ends in: the entries begun, and one
        more when `text` has opened the list and is not inside an entry."""
        begun = text.count(self.entry_start)
        between = text.startswith(self.opening) and begun == text.count(self.entry_end)
        return self.grammar(begun + 1 if between else begun)


# Detection as `generate` decodes it: labels are names and numbers digits, so "\t{" begins an entry and "}" ends it,
# and nothing else does. Opened with "```json\n[", a first entry needs "\n", the longest entry and the close, a later
# one ",\n" (the reserve), the longest entry and the close.
DETECTION_LIST = EntryList(detection_list_grammar, DETECTION_OPEN.removesuffix("\n"), DETECTION_INDENT + "{",
                           "}", _DETECTION_ENTRY_BYTES + len(_DETECTION_LIST_END))


def grounding_grammar(max_tokens: int, num_frames: int | None = None, prompt: str | None = None) -> str:
    """`{"bbox_3d": [9 numbers]}` (`serialize_grounding`)."""
    return f'root ::= "{{" {_key(BOX_KEY)} box "}}"\n' + _box_rule() + _COMMON_RULES


def frame_selection_grammar(max_tokens: int, num_frames: int | None = None, prompt: str | None = None) -> str:
    """`{"frame": k}` (`serialize_frame_selection`): k one of the `num_frames` views' indices when given (the parser
    would clamp any other), else a whole number without a leading zero."""
    if num_frames is not None and (isinstance(num_frames, bool) or int(num_frames) < 1):
        raise ValueError(f"num_frames must be a positive whole number, got {num_frames!r}")
    frames = (" | ".join(f'"{k}"' for k in range(int(num_frames))) if num_frames is not None
              else f'"0" | [1-9] [0-9]{{0,{MAX_FRAME_DIGITS - 1}}}')
    return f'root ::= "{{" {_key(FRAME_KEY)} ({frames}) "}}"\n'


def pointmap_grammar(max_tokens: int, num_frames: int | None = None, prompt: str | None = None) -> str:
    """`{"pointmap": [x, y, z], "label": "..."}` (`serialize_pointmap`; without a label, no label key)."""
    return (f'root ::= "{{" {_key(POINTMAP_KEY)} "[" number {_SEP} number {_SEP} number "]" '
            f'({_SEP} {_key(POINTMAP_LABEL_KEY)} label)? "}}"\n' + _COMMON_RULES)


def _characters(chars: str) -> str:
    return "(" + " | ".join(literal(c) for c in chars) + ")"


def _letters(letters) -> str:
    return "[" + "".join(sorted(letters)) + "]"


_LOWER = "abcdefghijklmnopqrstuvwxyz"


@functools.lru_cache(maxsize=8)  # the same few rules for every caption request (~10 ms of Python each to build)
def _word_rules(max_letters: int, not_words: tuple[str, ...]) -> str:
    """`word`: a capital or lower-case letter, then lower-case letters (2 to `max_letters` in all), so a word is never
    camel-cased glue of tokens (`pointmapTextcouch`); the one-letter words `a`, `A`, `I`; an acronym of 2-3 capitals
    (`TV`); inner hyphens or apostrophes join lower-case parts (`L-shaped`, `it's`). No run of letters holds one of
    `not_words` (lower-case; the first letter in either case), anywhere (`dpointmap` neither).

    The rules are the product of the matching automaton of `not_words` (its states: the prefixes of `not_words`
    that the letters so far may end in) and the count of letters: `l<state>_<n>` is what may follow `n` letters
    ending in that state (`h` for a word's first letter, after which one more must come)."""
    states = sorted({w[:k] for w in not_words for k in range(len(w))}, key=lambda t: (len(t), t))

    def step(state: str, letter: str) -> str | None:
        """The state after `letter`: the longest end of the letters that begins one of `not_words`; None where one
        of them is complete."""
        text = state + letter
        if any(text.endswith(w) for w in not_words):
            return None
        return next(text[k:] for k in range(len(text) + 1) if text[k:] in states)

    rules, todo, named = [], [], set()

    def name(state: str, n: int, first: bool = False) -> str:
        rule = f"l{states.index(state)}_{n}{'h' if first else ''}"
        if rule not in named:
            named.add(rule)
            todo.append((rule, state, n, first))
        return rule

    def letters_then(state: str, n: int, capitals: bool = False) -> list[str]:
        """One more letter (its state's letters grouped in one class), then what may follow it."""
        targets: dict[str, set] = {}
        for letter in _LOWER:
            target = step(state, letter)
            if target is not None:
                targets.setdefault(target, set()).update({letter, letter.upper()} if capitals else {letter})
        return [f"{_letters(letters)} {name(t, n + 1, first=n == 0 and capitals)}" for t, letters in targets.items()]

    joined = "((\"-\" | \"'\") part)"
    rules.append(f"word ::= [A-Z]{{2,3}} | [aAI] | [A-Za-z] {joined}{{1,2}} | head {joined}{{0,2}}")
    rules.append(f"head ::= {' | '.join(letters_then('', 0, capitals=True))}")
    rules.append(f"part ::= {' | '.join(letters_then('', 0))}")
    while todo:
        rule, state, n, first = todo.pop(0)
        options = [] if first else ['""']  # a head has two letters at least, a part one
        if n < max_letters:
            options += letters_then(state, n)
        rules.append(f"{rule} ::= {' | '.join(options)}")
    return "\n".join(rules) + "\n"


# Words a caption may not hold: the structured answers' key names that are no English word (`bbox_3d` and `box_3d`
# cannot be written without `_`; "label" and "frame" are English, and with no quotes no key can be written).
CAPTION_NOT_WORDS = ("bbox", "pointmap")


def caption_grammar(max_tokens: int, num_frames: int | None = None, prompt: str | None = None) -> str:
    """A caption (`serialize_caption`): prose, what a reader accepts as a description, and nothing of another task's
    syntax. Sentences joined by one space; a sentence starts with a word and ends with one of `.!?`; words are
    joined by one space, after a `,` or `;` or none; a word is letters (`_word_rules`: 2-20, lower-case after the
    first, no key name; or `a`, `I`); a number (`2`, `1.5`; no minus) stands between words, never next to another
    number (a list of numbers is a box copied from the prompt, not prose); a parenthesis holds words and closes
    before the sentence goes on. So no brace, bracket, quote, backslash, backtick or colon, no line break, no leading
    or double space, no double punctuation."""
    number = f'[0-9]{{1,{MAX_CAPTION_NUMBER_DIGITS}}} ("." [0-9]{{1,2}})?'
    return (
        "root ::= sentence (\" \" sentence)*\n"
        f"sentence ::= word phrase* (pause number)? {_characters(SENTENCE_ENDS)}\n"
        "phrase ::= pause (unit | number pause unit)\n"
        "unit ::= word | \"(\" word inner* \")\"\n"
        "inner ::= pause (word | number pause word)\n"
        f"pause ::= {_characters(CLAUSE_MARKS)}? \" \"\n"
        f"number ::= {number}\n" + _word_rules(MAX_WORD_LETTERS, CAPTION_NOT_WORDS)
    )


# An option line as benchmarks write it: "A. chair" (VSI-Bench, SynthRooms), "A) chair", "(A) chair", "A: chair", and
# the same with lower-case letters; the layout is told apart so that one question's options are read in one layout.
_OPTION_LINE = re.compile(r"^[ \t]*(?P<layout>\((?P<paren>[A-Za-z])\)|(?P<letter>[A-Za-z])(?P<mark>[.):]))[ \t]+\S",
                          re.MULTILINE)
# a question that asks for an option letter ("Answer with the option's letter from the given choices directly.")
_ASKS_FOR_LETTER = re.compile(r"\b(?:option|choice)(?:'s)?\s+letter\b|\bletter\s+of\s+the\s+(?:\w+\s+)?"
                              r"(?:option|choice|answer)\b", re.IGNORECASE)


# a numbered line ("1. chair", "2) table", "(3) lamp", "4: bed"): options as some people number them, which this
# model, trained on lettered options, answers by no number it was taught
_NUMBERED_LINE = re.compile(r"^[ \t]*(?:\((?P<paren>[0-9]+)\)|(?P<number>[0-9]+)[.):])[ \t]+\S", re.MULTILINE)


def _option_letters(prompt: str | None) -> dict[tuple[str, bool], list[str]]:
    """The letters of the option lines of `prompt`, in order, by layout: `(mark, lower case)` → letters."""
    found: dict[tuple[str, bool], list[str]] = {}
    for line in _OPTION_LINE.finditer(prompt or ""):
        letter = line["paren"] or line["letter"]
        found.setdefault(("()" if line["paren"] else line["mark"], letter.islower()), []).append(letter)
    return found


def offered_options(prompt: str | None) -> tuple[str, ...]:
    """The option letters a spatial question offers, in order, as the question writes them: lines that start with
    `A. `, `A) `, `(A) ` or `A: ` (or the same in lower case), lettered from A (or a) on in one layout (`A. chair` /
    `B. table`: VSI-Bench's and SynthRooms' layout); `()` for a question without options (a numerical one). A line
    `Q: ...` or a list lettered from elsewhere is no set of options."""
    for (_, lower), letters in _option_letters(prompt).items():
        first = "a" if lower else "A"
        options = tuple(dict.fromkeys(letters))
        if options == tuple(chr(ord(first) + k) for k in range(len(options))):
            return options
    return ()


def _repeated_letter(prompt: str | None) -> str | None:
    """The first letter that the options `offered_options` reads name twice ("A. chair" ... "A. sofa"), or None."""
    options = offered_options(prompt)
    for letters in _option_letters(prompt).values():
        if tuple(dict.fromkeys(letters)) == options:
            return next((letter for k, letter in enumerate(letters) if letter in letters[:k]), None)
    return None


def _numbered_options(prompt: str | None) -> tuple[str, ...]:
    """The numbers of a question's numbered lines when they count from 1 (`1. chair` / `2. table`), else `()`."""
    numbers = tuple(line["paren"] or line["number"] for line in _NUMBERED_LINE.finditer(prompt or ""))
    return numbers if len(numbers) > 1 and numbers == tuple(str(k) for k in range(1, len(numbers) + 1)) else ()


def options_problem(prompt: str | None) -> str | None:
    """Why a spatial question cannot be answered in its grammar, or None:

    - it names an option letter twice (`A. chair` / `B. table` / `A. sofa`): an answer "A" would not say which;
    - it numbers its options (`1. chair` / `2. table`) and letters none: this model answers options by letter, and
      the number grammar would force any number on it ("2010");
    - it asks for an option letter but offers no options that `offered_options` reads (the number grammar would
      force a number on it)."""
    if prompt is None:
        return None
    repeated = _repeated_letter(prompt)
    if repeated is not None:
        return (f"the question names option {repeated} twice, so an answer '{repeated}' would not say which: letter "
                "each option once, from A")
    if offered_options(prompt):
        return None
    numbered = _numbered_options(prompt)
    if numbered:
        return (f"the question numbers its options ({', '.join(numbered)}), and this model answers options by their "
                "letter: write them as 'A. chair', 'B. table', lettered from A")
    if not _ASKS_FOR_LETTER.search(prompt):
        return None
    return ("the question asks for an option letter but lists no options this model reads: write each option on its "
            "own line as 'A. chair', 'A) chair', '(A) chair' or 'A: chair', lettered from A")


def spatial_answer_grammar(max_tokens: int, num_frames: int | None = None, prompt: str | None = None) -> str:
    """A spatial-QA answer (`serialize_spatial_answer`): one of the option letters `prompt` (the question) offers; a
    number (whole or with decimals) for a question that offers none; without the question, either. A question that
    asks for a letter and offers none, names a letter twice or numbers its options is a ValueError
    (`options_problem`), not given a grammar."""
    number = '"-"? ("0" | [1-9] [0-9]{0,5}) ("." [0-9]{1,4})?'
    if prompt is None:
        return f"root ::= {number} | [A-Z]\n"
    problem = options_problem(prompt)
    if problem is not None:
        raise ValueError(problem)
    options = offered_options(prompt)
    return f"root ::= {' | '.join(literal(letter) for letter in options)}\n" if options else f"root ::= {number}\n"


__all__ = [
    "DETECTION_LIST",
    "ENGINE_REQUIREMENT",
    "EntryList",
    "answer_bytes",
    "caption_grammar",
    "detection_entries",
    "detection_grammar",
    "detection_list_grammar",
    "frame_selection_grammar",
    "grounding_grammar",
    "grammar_characters",
    "literal",
    "offered_options",
    "options_problem",
    "pointmap_grammar",
    "spatial_answer_grammar",
]
