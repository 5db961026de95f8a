"""Any OpenAI-compatible server (vLLM, flagstack serve, ...) through the `openai` client.

Scoring, mode "logprobs": a completions call on prompt + label with echo=True and logprobs, summing
the log-probs of the tokens past the prompt's text (by text offset, so the server's tokenizer may
differ from ours). Mode "choice", for servers without echoed logprobs: greedy generation restricted
to the labels (vLLM's guided_choice, ignored elsewhere) and the answer matched to a label; the chosen
label gets log-prob 0 and the rest CHOICE_FLOOR. Prompts are token ids of the local tokenizer (the
embedded SmolLM2 one unless given), decoded to text for the request; budgets are counted with it.
"""
from __future__ import annotations

import numpy as np

from flagstack.annotate.backends.base import TokenStats, check_distribution_args, check_score_args

MODES = ("logprobs", "choice")
CHOICE_FLOOR = -20.0


def _local_tokenizer(name: str | None):
    from transformers import AutoTokenizer

    from flagstack.engine.loader import embedded_gguf_path
    from flagstack.engine.tokenizer import load_gguf_tokenizer

    if name:
        return AutoTokenizer.from_pretrained(name)
    return load_gguf_tokenizer(embedded_gguf_path())


class OpenAIBackend:
    constrains_json = False

    def __init__(self, base_url: str, model: str | None = None, mode: str = "logprobs", api_key: str = "EMPTY",
                 tokenizer=None, client=None):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if client is None:
            import openai

            client = openai.OpenAI(base_url=base_url, api_key=api_key)
        self.client, self.mode = client, mode
        self.model = model or client.models.list().data[0].id
        self.model_name = f"openai:{self.model}"
        self.tokenizer = tokenizer if tokenizer is not None else _local_tokenizer(None)
        self._stats = TokenStats()

    def _count(self, resp) -> None:
        """Add a response's prompt tokens (a server's own cache hits are not reported: all count as computed)."""
        n = getattr(resp.usage, "prompt_tokens", 0) or 0
        self._stats.prompt_tokens_sent += n
        self._stats.prompt_tokens_computed += n

    def _echo_score(self, prompt_text: str, cand_text: str) -> float:
        resp = self.client.completions.create(model=self.model, prompt=prompt_text + cand_text, max_tokens=1,
                                              temperature=0.0, echo=True, logprobs=1)
        lp = resp.choices[0].logprobs
        self._count(resp)
        total, end = 0.0, len(prompt_text) + len(cand_text)
        for offset, value in zip(lp.text_offset, lp.token_logprobs):
            if len(prompt_text) <= offset < end and value is not None:
                total += value
        return total

    def _choose(self, prompt_text: str, cand_texts: list[str]) -> np.ndarray:
        choices = [c.strip() for c in cand_texts]
        resp = self.client.completions.create(model=self.model, prompt=prompt_text, temperature=0.0,
                                              max_tokens=max(len(c) for c in choices),
                                              extra_body={"guided_choice": choices})
        answer = resp.choices[0].text.strip().lower()
        scores = np.full(len(choices), CHOICE_FLOOR)
        hits = [i for i, c in enumerate(choices) if answer.startswith(c.lower())]
        if hits:
            scores[max(hits, key=lambda i: len(choices[i]))] = 0.0
        return scores

    def score(self, prompts: list[list[int]], candidates: list[list[int]]) -> np.ndarray:
        check_score_args(prompts, candidates)
        cand_texts = [self.tokenizer.decode(c) for c in candidates]
        scores = np.zeros((len(prompts), len(candidates)))
        for i, prompt in enumerate(prompts):
            text = self.tokenizer.decode(prompt)
            self._stats.requests += 1
            if self.mode == "choice":
                scores[i] = self._choose(text, cand_texts)
            else:
                scores[i] = [self._echo_score(text, c) for c in cand_texts]
        return scores

    def answer_distribution(self, prompts: list[list[int]], k: int) -> list[dict]:
        """The server's top log-probs for the next token, {token text: log-prob}; OpenAI's API caps k at 20,
        servers such as vLLM allow more."""
        check_distribution_args(prompts, k)
        out = []
        for prompt in prompts:
            resp = self.client.completions.create(model=self.model, prompt=self.tokenizer.decode(prompt), max_tokens=1,
                                                  temperature=0.0, logprobs=k)
            self._stats.requests += 1
            self._count(resp)
            top = resp.choices[0].logprobs.top_logprobs
            if not top or not top[0]:
                raise ValueError(f"the server at {self.client.base_url} returned no top logprobs; "
                                 "a readout needs a server that returns them")
            out.append({str(t): float(v) for t, v in top[0].items()})
        return out

    def generate(self, prompts: list[list[int]], max_tokens: int, json_schema: dict | None = None) -> list[str]:
        """Greedy completions; the schema is passed as vLLM's guided_json (the caller validates anyway)."""
        extra = {"guided_json": json_schema} if json_schema is not None else None
        out = []
        for prompt in prompts:
            resp = self.client.completions.create(model=self.model, prompt=self.tokenizer.decode(prompt),
                                                  max_tokens=max_tokens, temperature=0.0, extra_body=extra)
            self._stats.requests += 1
            out.append(resp.choices[0].text)
        return out

    def stats(self) -> dict:
        return self._stats.as_dict()
