"""Read the few JDL (ClassAd) attributes a site needs.

A small parser for DIRAC's JDL subset: ``[ Name = value; ... ]`` where a
value is a quoted string, a number/bare word, or a ``{ list }`` of those.
DIRAC's ClassAd strings have no escapes.
"""

from __future__ import annotations

import re
import shlex

_TOKEN = re.compile(r'\s*(?:"(?P<str>[^"]*)"|(?P<word>[^\s,;{}\[\]"]+))\s*')


def _value(text: str) -> str | list[str]:
    text = text.strip()
    if text.startswith("{") and text.endswith("}"):
        return [
            m.group("str") if m.group("str") is not None else m.group("word")
            for m in _TOKEN.finditer(text[1:-1])
            if m.group(0).strip()
        ]
    if text.startswith('"') and text.endswith('"'):
        return text[1:-1]
    return text


def parse_jdl(jdl: str) -> dict[str, str | list[str]]:
    """Attribute name -> value (strings, or lists of strings)."""
    body = jdl.strip()
    if body.startswith("[") and body.endswith("]"):
        body = body[1:-1]
    out: dict[str, str | list[str]] = {}
    i, n = 0, len(body)
    while i < n:
        eq = body.find("=", i)
        if eq < 0:
            break
        name = body[i:eq].strip().strip(";").strip()
        j = eq + 1
        depth, in_str = 0, False
        while j < n:
            c = body[j]
            if c == '"':
                in_str = not in_str
            elif not in_str and c in "{[":
                depth += 1
            elif not in_str and c in "}]":
                depth -= 1
            elif not in_str and c == ";" and depth == 0:
                break
            j += 1
        if name:
            out[name] = _value(body[eq + 1 : j])
        i = j + 1
    return out


def as_list(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def input_sandbox_pfns(attrs: dict[str, str | list[str]]) -> list[str]:
    """The sandbox-store entries (``SB:...``) of InputSandbox."""
    return [v for v in as_list(attrs.get("InputSandbox")) if v.startswith("SB:")]


def command(attrs: dict[str, str | list[str]]) -> list[str]:
    """Executable + Arguments as an argv list."""
    exe = attrs.get("Executable")
    if not exe or isinstance(exe, list):
        raise ValueError("JDL has no Executable")
    args = attrs.get("Arguments") or ""
    if isinstance(args, list):
        args = " ".join(args)
    return [exe, *shlex.split(args)]


#: DiracX's sandbox PFNs end in ``/<algorithm>:<hex checksum>.<format>``
#: (diracx.db.sql.SandboxMetadataDB.get_pfn): the checksum DiracX recorded.
_PFN_CHECKSUM = re.compile(r"/(?P<algo>[a-z0-9]{3,10}):(?P<hex>[0-9a-f]{64})\.[a-z0-9.]+$")


def pfn_checksum(pfn: str) -> tuple[str, str]:
    """``(algorithm, hex digest)`` recorded in a sandbox PFN; ValueError if none."""
    m = _PFN_CHECKSUM.search(pfn)
    if m is None:
        raise ValueError(f"sandbox PFN {pfn!r} carries no checksum")
    return m.group("algo"), m.group("hex")


def output_file_name(attrs: dict[str, str | list[str]], attr: str, default: str) -> str:
    """The JDL's StdOutput/StdError: a plain file name inside the job's
    directory.  The site opens it for writing, so an absolute path or a
    ``..`` would let a job's JDL write anywhere the site may."""
    value = attrs.get(attr) or default
    if isinstance(value, list) or value in (".", "..") or "/" in value or "\x00" in value:
        raise ValueError(f"JDL {attr} {value!r} must be a file name inside the job's directory")
    return value
