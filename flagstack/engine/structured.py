"""Structured output with xgrammar: a grammar is compiled once per request (JSON, JSON schema, regex,
choice list or EBNF), then every sequence gets its own matcher that fills a token bitmask each step;
the sampler applies it to the logits (forbidden tokens -> -inf) and the matcher accepts the sampled
token. The engine only sees `SamplingParams.constraint_factory`.
"""
from __future__ import annotations

import json
import re
from typing import Any, Callable

import torch
import xgrammar as xgr

KINDS = ("json", "json_object", "regex", "choice", "grammar")


class GrammarConstraint:
    """One sequence's grammar state: masks the next token's logits and accepts the chosen token."""

    def __init__(self, compiled: xgr.CompiledGrammar, vocab_size: int) -> None:
        self.matcher = xgr.GrammarMatcher(compiled)
        self.bitmask = xgr.allocate_token_bitmask(1, vocab_size)
        self.vocab_size = vocab_size

    def mask_logits(self, row: torch.Tensor) -> None:
        """Set the logits of tokens the grammar forbids next to -inf (row: [vocab], in place)."""
        self.matcher.fill_next_token_bitmask(self.bitmask)
        xgr.apply_token_bitmask_inplace(row[None], self.bitmask.to(row.device, non_blocking=True),
                                        vocab_size=self.vocab_size)

    def accept(self, token: int) -> bool:
        """Advance by the sampled token; True when generation must stop (grammar done or token rejected)."""
        if self.matcher.is_terminated():
            return True
        return not self.matcher.accept_token(token) or self.matcher.is_terminated()


class StructuredOutputs:
    """Compiles grammars for one tokenizer / vocabulary (compiled grammars are cached by xgrammar)."""

    def __init__(self, tokenizer, vocab_size: int, stop_token_ids: list[int]) -> None:
        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size, stop_token_ids=stop_token_ids)
        self.compiler = xgr.GrammarCompiler(info)
        self.vocab_size = vocab_size

    def compile(self, kind: str, spec: Any) -> xgr.CompiledGrammar:
        """Compile one constraint; ValueError (naming the kind) when the spec is malformed."""
        try:
            if kind == "json_object":
                return self.compiler.compile_builtin_json_grammar()
            if kind == "json":
                schema = spec if isinstance(spec, str) else json.dumps(spec)
                return self.compiler.compile_json_schema(schema, any_whitespace=False)
            if kind == "regex":
                return self.compiler.compile_regex(spec)
            if kind == "choice":
                return self.compiler.compile_regex(choice_regex(spec))
            if kind == "grammar":
                return self.compiler.compile_grammar(spec)
        except Exception as err:  # noqa: BLE001 - xgrammar raises several types; a bad spec is the user's error
            detail = re.sub(r"^\[[^\]]*\] \S+: ", "", str(err)).strip()  # drop xgrammar's time / C++ location
            raise ValueError(f"{kind}: cannot compile it: {detail}") from None
        raise ValueError(f"structured output kind must be one of {', '.join(KINDS)}, got {kind!r}")

    def factory(self, compiled: xgr.CompiledGrammar) -> Callable[[], GrammarConstraint]:
        """What SamplingParams.constraint_factory takes: a fresh matcher per sequence."""
        return lambda: GrammarConstraint(compiled, self.vocab_size)

    def compile_factory(self, kind: str, spec: Any) -> GrammarFactory:
        """compile() and factory() in one, as a factory that can also travel to an engine process."""
        return GrammarFactory(kind, spec, self.compile(kind, spec), self.vocab_size)


class GrammarFactory:
    """A constraint_factory that pickles as its (kind, spec): xgrammar's compiled grammar does not pickle,
    so an engine in another process compiles it again (`compile_with`, cached by xgrammar's compiler)."""

    def __init__(self, kind: str, spec: Any, compiled: xgr.CompiledGrammar | None, vocab_size: int) -> None:
        self.kind, self.spec, self.compiled, self.vocab_size = kind, spec, compiled, vocab_size

    @property
    def needs_compile(self) -> bool:
        return self.compiled is None

    def compile_with(self, structured: StructuredOutputs) -> None:
        self.compiled, self.vocab_size = structured.compile(self.kind, self.spec), structured.vocab_size

    def __call__(self) -> GrammarConstraint:
        if self.compiled is None:
            raise RuntimeError(f"{self.kind} grammar: not compiled in this process (call compile_with first)")
        return GrammarConstraint(self.compiled, self.vocab_size)

    def __getstate__(self) -> dict:
        return {"kind": self.kind, "spec": self.spec, "compiled": None, "vocab_size": self.vocab_size}


def choice_regex(choices: Any) -> str:
    """A regex matching exactly one of the given strings."""
    if not isinstance(choices, list) or not choices or not all(isinstance(c, str) and c for c in choices):
        raise ValueError("choice must be a non-empty list of non-empty strings")
    return "(" + "|".join(re.sub(r"([\\.^$*+?()\[\]{}|/-])", r"\\\1", c) for c in choices) + ")"
