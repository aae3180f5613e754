"""JSON Schema to a llama.cpp grammar (GBNF) that admits only valid JSON: no gap left open.

llama.cpp's converter (``Engine.grammar_from_json_schema``) does most of the work, but it
silently drops some keywords: bounds on numbers, ``required`` names missing from
``properties``, the other keywords next to a list of types, ``minItems`` without ``items``.
A grammar that drops a keyword admits output the schema rejects, so before converting, this
module rewrites the schema:

- what the converter ignores but a grammar can express is rewritten into forms it handles
  (type lists become ``anyOf``, enum values that break sibling keywords are dropped) or into
  rules written here (integer ranges; number ranges with whole-number bounds);
- what no grammar here enforces (``uniqueItems``, ``multipleOf``, ``not``, ``if``/``then``,
  ``allOf``, ``patternProperties`` ...) is refused with ``UnsupportedSchema``, which the
  caller answers with a 400 naming the schema. Refusing beats a promise we cannot keep.

The converter also lets raw control characters into strings, which is invalid JSON; its
character rules are tightened here.

Grammars are handled as rule sets (name -> body) so that several can be composed into one:
each is namespaced with a prefix and the caller adds the rules that join them.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# Keywords that only describe (jsonschema does not assert them): always safe to ignore.
ANNOTATIONS = frozenset({
    "title", "description", "default", "examples", "example", "$schema", "$id", "$comment",
    "deprecated", "readOnly", "writeOnly", "format", "discriminator", "nullable", "strict",
    "contentMediaType", "contentEncoding", "$anchor"})

# Keywords a grammar here cannot enforce.
REFUSED = frozenset({
    "allOf", "not", "if", "then", "else", "dependentRequired", "dependentSchemas",
    "dependencies", "patternProperties", "propertyNames", "minProperties", "maxProperties",
    "contains", "minContains", "maxContains", "multipleOf", "unevaluatedProperties",
    "unevaluatedItems", "additionalItems", "$dynamicRef", "$recursiveRef"})

# Formats llama.cpp's converter enforces (others are annotations: it generates any string).
ENFORCED_FORMATS = frozenset({"date", "time", "date-time", "uuid", "uuid1", "uuid2", "uuid3",
                              "uuid4", "uuid5"})

# A JSON string character: anything but a quote, a backslash or a control character, or an
# escape. (The converter's own rules admit raw control characters, which JSON forbids.)
JSON_CHAR = r'[^"\\\x7F\x00-\x1F]'

BOUNDS = frozenset({"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"})

_MAX_DIGITS = 16  # as the converter's own integers: no 300-digit runaway numbers


class UnsupportedSchema(ValueError):
    """The schema uses something the grammar cannot guarantee; ``where`` is a JSON pointer in it."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{message} (at '{where or '/'}')" if where else message)
        self.where = where


@dataclass
class Rules:
    """A grammar as named rules; ``root`` names the rule that matches the whole value."""

    root: str
    rules: dict[str, str] = field(default_factory=dict)

    def gbnf(self) -> str:
        """The complete grammar text, with ``root`` as its start rule."""
        rules = dict(self.rules)
        if self.root != "root":
            rules["root"] = self.root
        return "\n".join(f"{name} ::= {body}" for name, body in rules.items())


# ---- schema -> grammar --------------------------------------------------------------------------

# --8<-- [start:schema_rules]
def schema_rules(schema: Any, to_gbnf: Callable[[dict[str, Any]], str], prefix: str) -> Rules:
    """Rules (namespaced with ``prefix``) that admit exactly JSON valid against ``schema``.

    ``to_gbnf`` is llama.cpp's converter (``Engine.grammar_from_json_schema``). Raises
    ``UnsupportedSchema`` when the schema asks for something the grammar cannot guarantee.
    """
    lowering = _Lowering()
    lowered = lowering.lower(schema, "")
    try:
        text = to_gbnf(lowered)
    except Exception as exc:  # the converter raises ValueError, AssertionError, KeyError, re.error ...
        raise UnsupportedSchema("", f"llama.cpp's JSON Schema converter cannot handle it: {exc}") from exc
    rules = parse_gbnf(text)
    if "char" in rules:
        rules["char"] = f'{JSON_CHAR} | "\\\\" (["\\\\/bfnrt] | "u" [0-9a-fA-F]{{4}})'
    if "dot" in rules:  # pattern "." : never a quote, backslash or control character
        rules["dot"] = JSON_CHAR
    for name, body in lowering.extra.items():
        rules[name] = body
        literal = '"' + json.dumps(lowering.marker(name)).replace('"', '\\"') + '"'
        rules = {k: v.replace(literal, name) for k, v in rules.items()}
    return namespaced(Rules("root", rules), prefix)
# --8<-- [end:schema_rules]


def parse_gbnf(text: str) -> dict[str, str]:
    """The converter's output, one ``name ::= body`` per line, as a dict."""
    rules = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        name, sep, body = line.partition(" ::= ")
        if not sep or not re.fullmatch(r"[a-zA-Z0-9-]+", name):
            raise UnsupportedSchema("", f"unexpected grammar line from the converter: {line[:80]!r}")
        rules[name] = body
    return rules


def namespaced(grammar: Rules, prefix: str) -> Rules:
    """Prefixes every rule name (definitions and references) so grammars can be merged."""
    mapping = {name: prefix + name for name in grammar.rules}
    return Rules(mapping.get(grammar.root, grammar.root),
                 {mapping[name]: rename(body, mapping) for name, body in grammar.rules.items()})


def rename(body: str, mapping: dict[str, str]) -> str:
    """Renames rule references in a GBNF rule body, leaving literals, classes and counts alone."""
    out, i = [], 0
    while i < len(body):
        c = body[i]
        if c in '"[':
            close = '"' if c == '"' else "]"
            j = i + 1
            while body[j] != close:
                j += 2 if body[j] == "\\" else 1
            out.append(body[i:j + 1])
            i = j + 1
        elif c == "{":
            j = body.index("}", i)
            out.append(body[i:j + 1])
            i = j + 1
        elif c.isalnum() or c == "-":
            m = re.compile(r"[a-zA-Z0-9-]+").match(body, i)
            out.append(mapping.get(m.group(), m.group()))
            i = m.end()
        else:
            out.append(c)
            i += 1
    return "".join(out)


# ---- rewriting the schema into what the converter enforces ----------------------------------------

class _Lowering:
    def __init__(self) -> None:
        self.extra: dict[str, str] = {}  # rules written here, referenced through marker constants

    @staticmethod
    def marker(name: str) -> str:
        return f"@@reference-server-rule:{name}@@"

    def lower(self, s: Any, where: str) -> dict[str, Any]:
        if s is True:
            return {}
        if not isinstance(s, dict):
            raise UnsupportedSchema(where, "a schema must be a JSON object" if s is not False
                                    else "the schema `false` admits no value")
        for key in s:
            if key in REFUSED or key == "uniqueItems" and s[key]:
                raise UnsupportedSchema(where, f"the keyword '{key}' cannot be enforced by a grammar")
        original, s = s, dict(s)
        for key in ("$defs", "definitions", "properties"):
            if isinstance(s.get(key), dict):
                s[key] = {k: self.lower(v, f"{where}/{key}/{k}") for k, v in s[key].items()}
        if isinstance(s.get("additionalProperties"), dict):
            s["additionalProperties"] = self.lower(s["additionalProperties"], f"{where}/additionalProperties")
        if isinstance(s.get("items"), (dict, bool)) and s["items"] is not False:
            s["items"] = self.lower(s["items"], f"{where}/items")
        for key in ("prefixItems", "items", "anyOf", "oneOf"):
            if isinstance(s.get(key), list):
                if not s[key]:
                    raise UnsupportedSchema(where, f"'{key}' must not be empty")
                s[key] = [self.lower(v, f"{where}/{key}/{i}") for i, v in enumerate(s[key])]

        for key in ("anyOf", "oneOf", "$ref"):  # the converter looks at nothing else on these nodes
            if key in s:
                extra = set(s) - ANNOTATIONS - {key, "$defs", "definitions"}
                if extra:
                    raise UnsupportedSchema(where, f"'{key}' together with {sorted(extra)} is not supported; "
                                            f"move those keywords into the alternatives")
        if isinstance(s.get("type"), list):
            return self._type_list(s, where)
        if "enum" in s or "const" in s:
            return self._constants(original, where)
        kind = s.get("type")
        if kind in ("integer", "number") and BOUNDS & set(s):
            return self._bounded(s, where)
        if kind == "object" or "properties" in s:
            self._object(s, where)
        if kind == "array":
            self._array(s, where)
        if kind == "string":
            self._string(s, where)
        return s

    def _type_list(self, s: dict[str, Any], where: str) -> dict[str, Any]:
        types = s["type"]
        if not types:
            raise UnsupportedSchema(where, "'type' must not be an empty list")
        keep = {k: s[k] for k in ("$defs", "definitions") if k in s}
        rest = {k: v for k, v in s.items() if k not in keep and k != "type"}
        if len(types) == 1:
            return self.lower({**rest, **keep, "type": types[0]}, where)
        return {"anyOf": [self.lower({**rest, "type": t}, where) for t in types], **keep}

    def _constants(self, s: dict[str, Any], where: str) -> dict[str, Any]:
        """The converter emits enum/const literals as they are; keep only those the schema accepts."""
        import jsonschema

        values = [s["const"]] if "const" in s else list(s["enum"])
        try:
            checker = jsonschema.validators.validator_for(s)(s)
            valid = [v for v in values if checker.is_valid(v)]
        except Exception as exc:  # e.g. a $ref that cannot be resolved from this node
            raise UnsupportedSchema(where, f"cannot check the 'enum'/'const' values: {exc}") from exc
        if not valid:
            raise UnsupportedSchema(where, "no value of 'enum'/'const' is valid against the rest of the schema")
        return {"enum": valid}

    def _object(self, s: dict[str, Any], where: str) -> None:
        props = s.setdefault("properties", {}) if "required" in s else s.get("properties", {})
        for name in s.get("required", []):
            if name not in props:
                if s.get("additionalProperties") is False:
                    raise UnsupportedSchema(where, f"'{name}' is required but additionalProperties is false")
                props[name] = {}

    def _array(self, s: dict[str, Any], where: str) -> None:
        tuple_items = s.get("prefixItems", s["items"] if isinstance(s.get("items"), list) else None)
        if tuple_items is not None:
            if "prefixItems" in s and "items" in s and s["items"] is not False:
                raise UnsupportedSchema(where, "'prefixItems' with 'items' is not supported")
            n = len(tuple_items)
            if s.get("minItems", 0) > n or s.get("maxItems", n) < n:
                raise UnsupportedSchema(where, "'minItems'/'maxItems' must allow exactly the tuple's length")
        elif "items" not in s and ("minItems" in s or "maxItems" in s):
            s["items"] = {}

    def _string(self, s: dict[str, Any], where: str) -> None:
        lengths = "minLength" in s or "maxLength" in s
        if "pattern" in s:
            pattern = s["pattern"]
            if lengths or "format" in s:
                raise UnsupportedSchema(where, "'pattern' together with a length or 'format' is not supported")
            for bad in ("[^", "\\s", "\\S", "\\W", "\\D", '"', "\\\\"):
                if bad in pattern:
                    raise UnsupportedSchema(where, f"'pattern' with {bad!r} is not supported (it could "
                                            "produce quotes, backslashes or control characters)")
            if not (pattern.startswith("^") and pattern.endswith("$")):
                raise UnsupportedSchema(where, "'pattern' must be anchored with ^ and $")
        if lengths and s.get("format") in ENFORCED_FORMATS:
            raise UnsupportedSchema(where, "'format' together with a length is not supported")

    def _bounded(self, s: dict[str, Any], where: str) -> dict[str, Any]:
        lo, hi = s.get("minimum"), s.get("maximum")
        xlo, xhi = s.get("exclusiveMinimum"), s.get("exclusiveMaximum")
        for key, value in (("minimum", lo), ("maximum", hi), ("exclusiveMinimum", xlo), ("exclusiveMaximum", xhi)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise UnsupportedSchema(where, f"'{key}' must be a number")
        if s["type"] == "integer":
            bounds_lo = [math.ceil(lo)] if lo is not None else []
            bounds_lo += [math.floor(xlo) + 1] if xlo is not None else []
            bounds_hi = [math.floor(hi)] if hi is not None else []
            bounds_hi += [math.ceil(xhi) - 1] if xhi is not None else []
            low, high = max(bounds_lo, default=None), min(bounds_hi, default=None)
            if low is not None and high is not None and low > high:
                raise UnsupportedSchema(where, "no integer lies between the bounds")
            body = alternatives_gbnf(integer_range(low, high))
        else:
            if xlo is not None or xhi is not None:
                raise UnsupportedSchema(where, "'exclusiveMinimum'/'exclusiveMaximum' on a number is not "
                                        "supported; use 'minimum'/'maximum' or an integer")
            for key, value in (("minimum", lo), ("maximum", hi)):
                if value is not None and not float(value).is_integer():
                    raise UnsupportedSchema(where, f"'{key}' on a number must be a whole number")
            low = int(lo) if lo is not None else None
            high = int(hi) if hi is not None else None
            if low is not None and high is not None and low > high:
                raise UnsupportedSchema(where, "'minimum' is greater than 'maximum'")
            body = alternatives_gbnf(number_range(low, high))
        name = f"bounded{len(self.extra)}"
        self.extra[name] = body
        return {"const": self.marker(name)}


# ---- numeric ranges --------------------------------------------------------------------------------
# An alternative is a list of atoms: a literal string, or a digit class (first, last, min, max)
# repeated between min and max times. Rendered to GBNF for llama.cpp, and to a regex for tests.

Atom = str | tuple[str, str, int, int]
Alternatives = list[list[Atom]]


def integer_range(lo: int | None, hi: int | None) -> Alternatives:
    """JSON integers n with lo <= n <= hi (None: unbounded), without leading zeros or -0."""
    alts: Alternatives = []
    if lo is None or lo < 0:  # negative numbers: "-" and a magnitude in [max(1, -hi), -lo]
        smallest = max(1, -hi) if hi is not None and hi < 0 else 1
        alts += [["-", *alt] for alt in _naturals(smallest, None if lo is None else -lo)]
    if hi is None or hi >= 0:
        alts += _naturals(max(lo, 0) if lo is not None else 0, hi)
    return alts


def number_range(lo: int | None, hi: int | None) -> Alternatives:
    """JSON numbers x with lo <= x <= hi for whole-number bounds: digits, an optional fraction, no exponent."""
    frac: list[Atom] = [".", ("0", "9", 1, 15)]

    def part(a: int, b: int | None) -> Alternatives:
        """Magnitudes m with a <= m <= b (b None: unbounded)."""
        if b is not None and a == b:
            return [[str(b)]]
        below = _naturals(a, None if b is None else b - 1)
        return [*below, *[[*alt, *frac] for alt in below], *([[str(b)]] if b is not None else [])]

    alts: Alternatives = []
    if lo is None or lo < 0:
        least = -hi if hi is not None and hi < 0 else 0
        alts += [["-", *alt] for alt in part(least, None if lo is None else -lo)]
    if hi is None or hi >= 0:
        alts += part(max(lo, 0) if lo is not None else 0, hi)
    return alts


def _naturals(lo: int, hi: int | None) -> Alternatives:
    """Decimal numerals of lo..hi (lo >= 0), hi None for no upper bound."""
    if hi is not None and lo > hi:
        return []
    alts: Alternatives = []
    top = hi if hi is not None else 10 ** max(len(str(lo)), 1) - 1
    for digits in range(len(str(lo)), len(str(top)) + 1):
        a = max(lo, 10 ** (digits - 1) if digits > 1 else 0)
        b = min(top, 10 ** digits - 1)
        if a <= b:
            alts += [[(x, y, 1, 1) if x != y else x for x, y in alt] for alt in _same_length(str(a), str(b))]
    if hi is None and len(str(top)) < _MAX_DIGITS:  # and every longer numeral
        alts.append([("1", "9", 1, 1), ("0", "9", len(str(top)), _MAX_DIGITS - 1)])
    return alts


def _same_length(a: str, b: str) -> list[list[tuple[str, str]]]:
    """Digit-wise classes covering the numerals a..b, which have the same length."""
    if a == b:
        return [[(c, c) for c in a]]
    if a[0] == b[0]:
        return [[(a[0], a[0]), *alt] for alt in _same_length(a[1:], b[1:])]
    rest = len(a) - 1
    if rest == 0:
        return [[(a[0], b[0])]]
    out: list[list[tuple[str, str]]] = []
    first = a[0]
    if a[1:] != "0" * rest:
        out += [[(a[0], a[0]), *alt] for alt in _same_length(a[1:], "9" * rest)]
        first = chr(ord(a[0]) + 1)
    last = b[0] if b[1:] == "9" * rest else chr(ord(b[0]) - 1)
    if first <= last:
        out.append([(first, last), *[("0", "9")] * rest])
    if b[1:] != "9" * rest:
        out += [[(b[0], b[0]), *alt] for alt in _same_length("0" * rest, b[1:])]
    return out


def alternatives_gbnf(alts: Alternatives) -> str:
    def atom(a: Atom) -> str:
        if isinstance(a, str):
            return json.dumps(a)
        first, last, lo, hi = a
        cls = f"[{first}]" if first == last else f"[{first}-{last}]"
        return cls if lo == hi == 1 else f"{cls}{{{lo}}}" if lo == hi else f"{cls}{{{lo},{hi}}}"
    return " | ".join("(" + " ".join(atom(a) for a in alt) + ")" for alt in alts)


def alternatives_regex(alts: Alternatives) -> str:
    def atom(a: Atom) -> str:
        if isinstance(a, str):
            return re.escape(a)
        first, last, lo, hi = a
        return f"[{first}-{last}]{{{lo},{hi}}}"
    return "|".join("(?:" + "".join(atom(a) for a in alt) + ")" for alt in alts)
