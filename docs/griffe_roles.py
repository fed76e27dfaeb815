"""Griffe extension for the API pages: the package's docstrings are written with Sphinx-style
roles, double backticks and ``text::`` before literal blocks (``:class:`~p2pmtl.x.Y```,
````code````); Markdown shows them as code spans (``Y``) and a plain colon instead of literal
markup."""
from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:class|meth|func|attr|mod|data|exc|obj):`(~?)([^`]+)`")
_DOUBLE = re.compile(r"``([^`]+)``")
_LITERAL = re.compile(r"(\S)::\n(\s*\n)")  # RST "text::" before an indented block


def _role(m: re.Match) -> str:
    target = m.group(2)
    return f"`{target.rsplit('.', 1)[-1]}`" if m.group(1) else f"`{target}`"


def clean(text: str) -> str:
    """Sphinx roles and double backticks as Markdown code spans."""
    return _LITERAL.sub(r"\1:\n\2", _DOUBLE.sub(r"`\1`", _ROLE.sub(_role, text)))


class SphinxRolesAsCode(griffe.Extension):
    def on_object(self, *, obj: Any, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = clean(obj.docstring.value)
