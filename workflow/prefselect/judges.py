"""Judges: which of two continuations of the same prompt is better, behind one interface, `compare`.

`vader` and `reward_model` score each prompt + continuation and the higher score wins; `llm` asks a chat model
over an OpenAI-compatible API, in both orders so that its position bias cancels.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial

import numpy as np

from . import stats
from .config import judge_settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Verdicts:
    """One verdict per comparison, aligned with the lists given to `compare`.

    `malformed` is per comparison, not a total, so that a caller judging several models in one call (one model
    load, one request pool) can still report each model's count.
    """

    outcome: np.ndarray  # 1.0 first wins, 0.0 second wins, 0.5 tie
    malformed: np.ndarray  # answers that could not be parsed (0-2 per comparison, llm only), each counted a tie


def compare(judge_config: str | dict, prompts: list, first: list[str], second: list[str]) -> Verdicts:
    """Judge `first[i]` against `second[i]`, both continuations of `prompts[i]`.

    `judge_config` is `evaluation.judge` (see config/README.md), or just a judge name; defaults are filled in.
    A prompt is text, or (reward_model only) a chat as a list of messages.
    """
    if not len(prompts) == len(first) == len(second):
        raise ValueError("prompts, first and second must have the same length")
    judge = judge_settings(judge_config)
    if judge["kind"] == "likelihood":
        raise ValueError(
            "the likelihood judge reads log-probs of held-out pairs (evaluation.likelihood_win_rates), "
            "it does not compare continuations"
        )
    if judge["kind"] == "llm":
        return _ask_llm(judge, prompts, first, second)
    score = _vader_scores if judge["kind"] == "vader" else partial(reward_scores, judge)
    return _by_score(score, prompts, first, second)


# Scoring judges -------------------------------------------------------------------------------------------------


def _by_score(
    score: Callable[[list, list[str]], np.ndarray], prompts: list, first: list[str], second: list[str]
) -> Verdicts:
    """The higher score wins, equal scores tie. Each distinct (prompt, continuation) is scored once, since the
    opponent's continuations recur once for every model judged against them."""
    keys = [json.dumps(item, default=list) for item in [*zip(prompts, first), *zip(prompts, second)]]
    position = {key: i for i, key in enumerate(dict.fromkeys(keys))}
    distinct = [json.loads(key) for key in position]
    scores = score([p for p, _ in distinct], [c for _, c in distinct])[[position[key] for key in keys]]
    n = len(first)
    return Verdicts(stats.outcome(scores[:n] - scores[n:]), np.zeros(n, dtype=int))


def _vader_scores(prompts: list[str], continuations: list[str]) -> np.ndarray:
    from .demo import vader_scores

    return vader_scores([p + c for p, c in zip(prompts, continuations)])


def reward_scores(judge: dict, prompts: list, continuations: list[str]) -> np.ndarray:
    """Reward of each prompt + continuation: the one output of a sequence-classification model."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from .models import device, load_model, load_tokenizer

    path, remote = judge["model"], judge["trust_remote_code"]
    model = load_model(path, remote, dtype="auto", auto_class=AutoModelForSequenceClassification)
    if model.config.num_labels != 1:
        raise ValueError(f"evaluation.judge.model {path!r} has {model.config.num_labels} outputs; a reward model has 1")
    tokenizer = load_tokenizer(path, remote)
    tokenizer.padding_side = "right"  # positions then match an unpadded forward pass
    model.config.pad_token_id = tokenizer.pad_token_id  # the model reads its reward at the last non-pad token
    model = model.to(device()).eval()
    ids = [_reward_input(tokenizer, p, c) for p, c in zip(prompts, continuations)]
    order = np.argsort([len(x) for x in ids], kind="stable")  # similar lengths per batch: little padding
    rewards = np.empty(len(ids))
    with torch.inference_mode():
        for start in range(0, len(ids), judge["batch_size"]):
            batch = order[start : start + judge["batch_size"]]
            enc = tokenizer.pad({"input_ids": [ids[i] for i in batch]}, return_tensors="pt").to(model.device)
            rewards[batch] = model(**enc).logits[:, 0].float().cpu().numpy()
    return rewards


def _reward_input(tokenizer, prompt, continuation: str) -> list[int]:
    """Token ids of prompt + continuation: a chat prompt goes through the chat template, text stays as it is."""
    if isinstance(prompt, str):
        return tokenizer(prompt + continuation, truncation=True)["input_ids"]
    if not tokenizer.chat_template:
        raise ValueError("a chat prompt needs a reward model whose tokenizer has a chat template")
    text = tokenizer.apply_chat_template([*prompt, {"role": "assistant", "content": continuation}], tokenize=False)
    return tokenizer(text, add_special_tokens=False, truncation=True)["input_ids"]  # the template wrote them


# LLM judge ------------------------------------------------------------------------------------------------------

QUESTION = """Two responses continue the same prompt. {criterion}

[Prompt]
{prompt}

[Response A]
{a}

[Response B]
{b}

Which response is better? Answer with the single letter A or B."""

ATTEMPTS = 3
BACKOFF_S = 1.0  # doubled after each failed attempt
RETRY_STATUS = {408, 429, 500, 502, 503, 504}
FILLER = {"RESPONSE", "ANSWER", "THE", "IS", "BETTER", "OUTPUT"}


class JudgeError(ValueError):
    """The judge's endpoint refused a request, or gave no usable reply after every attempt."""


def _ask_llm(judge: dict, prompts: list[str], first: list[str], second: list[str]) -> Verdicts:
    """Ask each question with first as A and again with first as B; the outcome is the mean of the two."""
    asked = [i for i in range(len(prompts)) if first[i] != second[i]]  # identical continuations tie, unasked
    questions = [(prompts[i], a, b) for i in asked for a, b in ((first[i], second[i]), (second[i], first[i]))]
    ask = partial(_ask, judge, _headers(judge))
    pool = ThreadPoolExecutor(judge["max_workers"])
    try:
        choices = list(pool.map(lambda question: _parse_choice(ask(*question)), questions))
    finally:
        pool.shutdown(cancel_futures=True)  # after a failure, do not retry every remaining question first
    outcome, malformed = np.full(len(prompts), 0.5), np.zeros(len(prompts), dtype=int)
    for i, in_order, swapped in zip(asked, choices[0::2], choices[1::2]):
        outcome[i] = (_first_wins(in_order, "A") + _first_wins(swapped, "B")) / 2
        malformed[i] = (in_order is None) + (swapped is None)
    return Verdicts(outcome, malformed)


def _first_wins(choice: str | None, first_is: str) -> float:
    return 0.5 if choice is None else float(choice == first_is)


def _parse_choice(answer: str) -> str | None:
    """'A' or 'B' from answers such as 'B', ' a.', '**Response A**' or 'Answer: B'; None for anything else."""
    words = [w for w in re.findall(r"[A-Z]+", answer.upper()) if w not in FILLER]
    return words[0] if words in (["A"], ["B"]) else None


def _headers(judge: dict) -> dict:
    # The key is read from the environment only, and never logged; a local endpoint may need none.
    key = os.environ.get(judge["api_key_env"])
    return {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}


def _ask(judge: dict, headers: dict, prompt: str, a: str, b: str) -> str:
    """The judge's answer to one question; timeouts, connection errors and overload are retried with backoff."""
    url = judge["base_url"].rstrip("/") + "/chat/completions"
    content = QUESTION.format(criterion=judge["criterion"], prompt=prompt, a=a, b=b)
    body = {"model": judge["model"], "messages": [{"role": "user", "content": content}], "temperature": 0}
    request = urllib.request.Request(url, json.dumps(body).encode(), headers)
    for attempt in range(ATTEMPTS):
        if attempt:
            time.sleep(BACKOFF_S * 2 ** (attempt - 1))
        try:
            with urllib.request.urlopen(request, timeout=judge["timeout_s"]) as reply:
                return _answer_text(reply.read(), url)
        except urllib.error.HTTPError as err:
            if err.code not in RETRY_STATUS:
                hint = f"; the API key is read from ${judge['api_key_env']}" if err.code in (401, 403) else ""
                raise JudgeError(f"LLM judge at {url}: HTTP {err.code} {err.reason}{hint}") from None
            failure = f"HTTP {err.code}"
        except (OSError, http.client.HTTPException) as err:  # timeouts, connection errors (URLError is an OSError)
            failure = str(getattr(err, "reason", err))
        log.warning("LLM judge at %s: attempt %d of %d failed (%s)", url, attempt + 1, ATTEMPTS, failure)
    raise JudgeError(f"LLM judge at {url}: no answer after {ATTEMPTS} attempts (last: {failure})")


def _answer_text(raw: bytes, url: str) -> str:
    try:
        return json.loads(raw)["choices"][0]["message"]["content"] or ""  # no text (a refusal): malformed
    except (ValueError, KeyError, IndexError, TypeError):
        raise JudgeError(f"LLM judge at {url}: the reply is not an OpenAI chat completion") from None
