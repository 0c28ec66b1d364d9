"""Final answers in text: what a completion answers, and the one normal form of a reference answer.

Extraction (:func:`extract_answer`) tries, in this order, and returns the first hit:

1. the last ``\\boxed{...}`` / ``\\fbox{...}`` (balanced, nested braces; the outermost of nested boxes), or
   a later brace-less ``\\boxed 5`` (MATH's own form in a few solutions: the text to the next ``$``);
2. the last final-answer line: ``#### X`` (GSM8K), ``final answer: X`` / ``final answer is X``,
   ``the answer is X``, ``Answer: X`` (case-insensitive; a marker inside X is followed to its own X, so
   Minerva's ``Final Answer: The final answer is $18$. I hope it is correct.`` answers ``18``; X runs to
   the end of its line or to its first clause break outside braces and ``$...$`` — ``. ``, a comma
   before a word (not ``2, 3``, nor a list's ``, and 3``), ``;``, `` (``, a dash, ``and``/``but`` before
   a word, or a word such as ``since``/``because``/``check`` — so that a check written after the answer
   is not graded as it; a trailing period and surrounding ``$`` are dropped, and a list's ``, and`` /
   ``, or`` becomes ``,``);
3. the whole text, when it is a short bare answer such as ``19``, ``-3.5``, ``\\frac{1}{2}`` (the tiny
   char-model task: its completion IS the answer);
4. the last inline math ``$...$``, ``\\(...\\)`` or ``\\[...\\]`` after the last ``$...$`` span of prose
   (one that opens with a digit, holds no ``=`` and two or more words outside braces and commands: the
   text between two dollar amounts, ``$2 each, so she makes 9 * $``, which a currency sign opened and
   the next one closed);
5. the last number in the text (only when ``last_number=True``, the default).
"""

from __future__ import annotations

import re

__all__ = [
    "MAX_TEXT_CHARS",
    "extract_answer",
    "final_line_value",
    "gold_answer",
    "last_boxed",
    "read_answer_line",
]

#: Completions longer than this are cut (from the front: answers come last) before extraction.
MAX_TEXT_CHARS = 200_000
#: Whole-text answers (extraction rule 3) must be at most this long.
_MAX_BARE_CHARS = 64

#: a box's opening, a brace, or an escaped brace ``\\{`` / ``\\}`` (a literal: a piecewise answer's
#: ``\\left\\{ ... \\right.`` opens none that closes)
_BOX_TOKEN = re.compile(r"\\(?:boxed|fbox)\s*\{|\\[{}]|\{|\}")
#: ``\\boxed 5`` without braces (a few MATH solutions write it so): the box's content runs to the next ``$``
#: or line end, as MATH's own answer reader takes it — or to the end of ``\\(..\\)`` / ``\\[..\\]`` math, the
#: next box, or a closing brace it did not open.
_BARE_BOX = re.compile(
    r"\\(?:boxed|fbox)[ \t]+(?=[^\s{])(?P<content>(?:(?!\\[)\]]|\\(?:boxed|fbox)\b)[^$\n])*)"
)
_FINAL_LINE = re.compile(
    r"(?:^|\n)[ \t]*####[ \t]*(?P<hash>[^\n]*)"
    r"|final[ \t]+answer(?:[ \t]+is)?[ \t]*[:：]?[ \t]*(?P<final>[^\n]*)"
    r"|the[ \t]+answer[ \t]+is[ \t]*[:：]?[ \t]*(?P<is>[^\n]*)"
    r"|(?:^|\n)[ \t]*\**answer\**[ \t]*[:：][ \t]*(?P<colon>[^\n]*)",
    re.IGNORECASE,
)
#: Where a final-answer line's answer ends and the prose after it begins (outside braces and ``$...$``).
_CLAUSE_BREAK = re.compile(
    # a list's ", and 3" (its last item ending the clause) is no break; ", and 12 is ..." is one
    r"\.\s|,\s+(?!(?:and|or)\s+[^\sa-z][^\s,]*\s*(?:[.;]|$))(?=[a-z]{2}|i\.e\.|e\.g\.)|;"
    r"|(?<!\\cup)(?<!\\cap)\s\(|\s[—–]\s"
    r"|\s(?:and|but)\s+(?=[a-z]{2})|\sI\s+hope\b"
    r"|\s(?:since|because|as|so|which|where|when|from|given|check|checking|verify|verifying|then)\b",
    re.IGNORECASE,
)
_LEADING_THE = re.compile(r"the\s+(?=final\b)", re.IGNORECASE)
#: ``1, 2, and 3`` / ``x, or y``: a list's last item, read as ``1, 2, 3``
_LIST_AND = re.compile(r",\s*(?:and|or)\s+(?=[^\sa-z])", re.IGNORECASE)
#: a word of prose in inline math: three or more letters not part of a ``\\command``
_PROSE_WORD = re.compile(r"(?<![\\a-z])[a-z]{3,}", re.IGNORECASE)
_BRACED = re.compile(r"\{[^{}]*\}")
#: The inline-math spans, as the regex ``\$\$(.+?)\$\$|\$(.+?)\$|\\\((.+?)\\\)|\\\[(.+?)\\\]`` (DOTALL) would
#: find them with ``finditer``; :func:`_last_inline_math` computes its last match in linear time (the
#: regex itself is quadratic on unclosed openers: each one scans to the end of the text).
_INLINE_MATH_OPEN = re.compile(r"\$|\\\(|\\\[")
_INLINE_MATH_CLOSE = {"$$": "$$", "$": "$", "\\(": "\\)", "\\[": "\\]"}
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_BARE_NUMBER = re.compile(r"\s*-?\d+(?:\.\d+)?\s*")
_BARE = re.compile(r"[\s\d.,+\-*/^()=\\{}a-z]*", re.IGNORECASE)


def last_boxed(text: str) -> str | None:
    """Content of the last closed ``\\boxed{}``/``\\fbox{}``, or of a later brace-less ``\\boxed 5`` (to the
    next ``$``, ``}`` or line end; a trailing period dropped); one linear pass over brace tokens."""
    depth = 0
    open_boxes: list[tuple[int, int]] = []  # (depth before the box's brace, content start)
    best: tuple[int, int] | None = None
    for match in _BOX_TOKEN.finditer(text):
        token = match.group()
        if token in ("\\{", "\\}"):
            continue  # an escaped brace is text, not a group
        if token == "}":
            if depth == 0:
                continue  # stray closing brace
            depth -= 1
            if open_boxes and open_boxes[-1][0] == depth:
                _, start = open_boxes.pop()
                # A later close position means a later (or enclosing) box: it wins; an empty one
                # ("I will put the answer in \\boxed{}") is no answer
                if text[start : match.start()].strip():
                    best = (start, match.start())
        else:
            if token != "{":
                open_boxes.append((depth, match.end()))
            depth += 1
    bare = None
    for match in _BARE_BOX.finditer(text):
        bare = match
    if bare is not None and (best is None or bare.start("content") > best[0]):
        content = _balanced_prefix(bare.group("content")).strip().removesuffix(".").strip()
        if content:
            return content
    if best is None:
        return None
    return text[best[0] : best[1]]


def _balanced_prefix(text: str) -> str:
    """``text`` up to its first closing brace that no brace in it opened."""
    depth = 0
    for index, char in enumerate(text):
        if char == "{":
            depth += 1
        elif char == "}":
            if depth == 0:
                return text[:index]
            depth -= 1
    return text


def _is_prose(content: str) -> bool:
    """Whether a ``$...$`` span is the prose between two dollar amounts rather than math: it opens with a
    digit (the amount), holds no ``=``, and two or more words of three or more letters outside braces and
    ``\\commands`` (``$2 each, so she makes 9 * $``; not ``$area = base \\times height$``)."""
    if not content[:1].isdigit() or "=" in content:
        return False
    for _ in range(3):  # drop \text{...} and other braced groups, nested up to three deep
        content = _BRACED.sub(" ", content)
    return len(_PROSE_WORD.findall(content)) >= 2


def _last_inline_math(text: str, *, skip_prose: bool = False) -> str | None:
    """Content of the last inline-math span (``$$..$$``, ``$..$``, ``\\(..\\)``, ``\\[..\\]``, non-empty,
    leftmost-first and non-overlapping as a regex scan would take them), in O(len(text)); with
    ``skip_prose``, of the last span after the last ``$``-delimited span of prose (:func:`_is_prose`), None
    when that one is the last: the spans themselves are the same, and a prose span voids the spans
    before it, whose math the prose went on from (the last number after it reads the answer better).

    Linear because every closer search either succeeds (the scan resumes after that closer) or fails
    once per closer kind (a closer absent after one position is absent after every later one)."""
    last: tuple[int, int] | None = None
    absent: set[str] = set()
    pos = 0
    while True:
        match = _INLINE_MATH_OPEN.search(text, pos)
        if match is None:
            break
        start = match.start()
        openers = ("$$", "$") if text.startswith("$$", start) else (match.group(),)
        span = None
        for opener in openers:
            closer = _INLINE_MATH_CLOSE[opener]
            if closer in absent:
                continue
            content = start + len(opener)
            end = text.find(closer, content + 1)  # at least one character of content
            if end < 0:
                absent.add(closer)
                continue
            span = (content, end, end + len(closer), opener.startswith("$"))
            break
        if span is None:
            pos = start + 1
        else:
            prose = skip_prose and span[3] and _is_prose(text[span[0] : span[1]])
            last = None if prose else (span[0], span[1])
            pos = span[2]
    return None if last is None else text[last[0] : last[1]]


def _first_clause(value: str) -> str:
    """``value`` up to its first :data:`_CLAUSE_BREAK` outside braces, ``$...$``, ``\\(...\\)`` and
    ``\\[...\\]`` (the answer of ``the answer is 3. Check: 3*2=6`` is ``3``, not the check's ``6``). A
    ``\\$``, a ``$`` that nothing closes, or one whose span to the next ``$`` is prose (:func:`_is_prose`)
    is a dollar sign, not math: ``the answer is $18. She had $5 left`` answers ``$18``."""
    dollars = [i for i, char in enumerate(value) if char == "$" and value[i - 1 : i] != "\\"]
    after = {d: dollars[k + 1] if k + 1 < len(dollars) else None for k, d in enumerate(dollars)}  # $ → next $
    depth, in_math, skip_to = 0, False, 0
    for i, char in enumerate(value):
        if i < skip_to:
            continue
        opener = value[i : i + 2]
        if not in_math and opener in ("\\(", "\\[") and value[i - 1 : i] != "\\":  # not \\[2pt]
            end = value.find(_INLINE_MATH_CLOSE[opener], i + 2)
            if end != -1:  # a delimited span is math: no clause breaks inside it
                skip_to = end + 2
                continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth = max(0, depth - 1)
        elif i in after:
            close = after[i]
            money = value[i + 1 : i + 2].isdigit() if close is None else _is_prose(value[i + 1 : close])
            if in_math or not money:
                in_math = not in_math
        elif depth == 0 and not in_math and _CLAUSE_BREAK.match(value, i):
            return value[:i]
    return value


def _clean(answer: str) -> str:
    answer = answer.strip()
    for _ in range(2):
        answer = answer.strip().rstrip(".").strip()
        if answer.startswith("$") and answer.endswith("$") and "$" not in answer.strip("$"):
            answer = answer.strip("$")  # one span around it all, not the ends of two ($1$ and $2$)
        for opener in ("\\(", "\\["):  # \( ... \) and \[ ... \] around the whole answer, one span
            closer = _INLINE_MATH_CLOSE[opener]
            if answer.startswith(opener) and answer.find(closer, 2) == len(answer) - 2 >= 2:
                answer = answer[2:-2].strip()
        answer = answer.strip("*").strip().lstrip(":：").strip()  # "**Answer:** 18**", "**Final Answer**: 18"
    boxed = last_boxed(answer)
    return boxed.strip() if boxed is not None else answer


#: what a later "the answer is ..." says of an earlier answer (``the answer is correct``): no answer itself
_VERDICT = re.compile(
    r"[ \t]*(?:(?:indeed|definitely|also|still)[ \t]+)?(?:correct|right|wrong|incorrect|reasonable|valid|invalid"
    r"|confirmed|verified|consistent|plausible|sensible)[ \t]*[.!]?[ \t]*",
    re.IGNORECASE,
)


def _not_an_answer(match: re.Match[str]) -> bool:
    """A markdown heading read as a GSM8K ``####`` line (``#### Step 2: Multiply``, ``#### Solution``: a
    value opening with a letter, longer than a choice like ``B``, with text after it), or a verdict
    (``the answer is correct``) — skipped when another line gives an answer."""
    hash_value, value = match.group("hash"), next(g for g in match.groups() if g is not None)
    if hash_value is not None:  # a heading has the solution after it; an answer (``#### True``) ends it
        stripped = hash_value.strip()
        follows = match.string[match.end() :].strip()
        return len(stripped) > 3 and stripped[:1].isalpha() and bool(follows)
    return _VERDICT.fullmatch(value) is not None


def final_line_value(text: str) -> str | None:
    """The raw answer of the last final-answer line of ``text`` (rule 2, before its clause break), or None;
    an answer that opens with a marker of its own is followed to that marker's answer (Minerva's ``Final
    Answer: The final answer is $18$.``; not ``Answer: 5. The answer is checked``)."""
    lines = list(_FINAL_LINE.finditer(text))
    # a lone verdict still answers (``the answer is yes``); a heading never does
    answers = [m for m in lines if not _not_an_answer(m)] or [m for m in lines if m.group("hash") is None][
        -1:
    ]
    if not answers:
        return None
    value = next(g for g in answers[-1].groups() if g is not None)
    for _ in range(4):  # each round drops a marker: the value shrinks
        inner = _FINAL_LINE.match(_LEADING_THE.sub("", value.lstrip(" \t*")))
        if inner is None:
            break
        value = next(g for g in inner.groups() if g is not None)
    return value


def read_answer_line(value: str) -> str:
    """An answer line's value (:func:`final_line_value`) as :func:`extract_answer` reads it: to its first
    clause break, without a trailing period, ``$``, ``\\(...\\)`` or markdown bold, a list's ", and"
    as a comma (``3. Check: done`` → ``3``)."""
    return _LIST_AND.sub(", ", _clean(_first_clause(value)))


def extract_answer(text: str, *, last_number: bool = True) -> str | None:
    """The final answer in ``text`` (see the module docstring for the order of rules), or None."""
    if not text:
        return None
    text = text.replace("\x00", "")
    if len(text) <= _MAX_BARE_CHARS and _BARE_NUMBER.fullmatch(text):
        return text.strip()  # the char-model task: the completion is just the number
    if len(text) > MAX_TEXT_CHARS:
        text = text[-MAX_TEXT_CHARS:]
    boxed = last_boxed(text)
    if boxed is not None:
        boxed = boxed.strip()
        return boxed or None
    line = final_line_value(text)
    if line is not None:
        value = read_answer_line(line)
        if value:
            return value
    stripped = text.strip()
    if stripped and len(stripped) <= _MAX_BARE_CHARS and "\n" not in stripped:
        candidate = _clean(stripped)
        if candidate and _BARE.fullmatch(candidate) and any(c.isdigit() for c in candidate):
            # No words: letters only as LaTeX commands/variables (\frac, x), never "so the sum is".
            if not re.search(r"(?<!\\)\b[a-z]{3,}\b", candidate, re.IGNORECASE):
                return candidate
    last_math = _last_inline_math(text, skip_prose=True)
    if last_math is not None:
        value = _clean(last_math)
        if value:
            return value
    if last_number:
        number = None
        for match in _NUMBER.finditer(text):
            number = match
        if number is not None:
            return number.group().rstrip(",")
    return None


#: a box command (``\\boxed``, ``\\fbox``) whatever follows it
_BOX_COMMAND = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
#: a plain number written with thousands separators: ``1,000`` / ``-12,345.5``
_THOUSANDS = re.compile(r"[+-]?[1-9]\d{0,2}(?:,\d{3})+(?:\.\d+)?")  # never after a leading 0


def gold_answer(gold: str) -> str:
    """The one normaliser of a reference (gold) answer, for the verifier and the dataset loaders alike:
    the last ``\\boxed{}`` if any (``""`` when every box is empty or unclosed), else the text after the
    last ``####`` (GSM8K; thousands separators dropped: ``2,000`` → ``2000``), else the text itself; a
    trailing period, surrounding ``$`` and markdown bold are dropped. ``""`` when nothing is left."""
    gold = gold.replace("\x00", "").strip()
    boxed = last_boxed(gold)
    if boxed is not None:
        return boxed.strip()
    if _BOX_COMMAND.search(gold):
        return ""  # only empty or unclosed boxes (``\\boxed{}``): no answer, not the box's text as one
    if "####" in gold:
        answer = _clean(gold.rsplit("####", 1)[1])
        return answer.replace(",", "") if _THOUSANDS.fullmatch(answer) else answer
    return _clean(gold)
