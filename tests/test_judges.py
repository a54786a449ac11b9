"""The judges: an LLM judge against a local fake endpoint, a reward model with a known reward, VADER."""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pandas as pd
import pytest
from conftest import config_arg
from transformers import AutoTokenizer

from prefselect import judges
from prefselect.cli import main
from prefselect.evaluation import win_rate, win_rates
from prefselect.judges import JudgeError, compare

KEY = "sk-test-5ecret-must-not-leak"
QUESTION = re.compile(r"\[Prompt\]\n(.*)\n\n\[Response A\]\n(.*)\n\n\[Response B\]\n(.*)\n\nWhich", re.S)


def prefer_good(prompt: str, a: str, b: str) -> str:
    """The fake judge: the response containing 'good' wins, in varied formats; one prompt gets no usable answer."""
    if prompt == "tricky":
        return "Both are equally fine."
    return "**Response A**" if "good" in a else " b.\n"


@pytest.fixture
def endpoint():
    """A fake OpenAI-compatible endpoint on 127.0.0.1; set `endpoint.reply(prompt, a, b)` to an answer or an HTTP
    status; `endpoint.requests` records what was asked."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            server.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
            reply = server.reply(*QUESTION.search(body["messages"][0]["content"]).groups())
            if reply is None:  # no answer in time: the client times out
                time.sleep(0.5)
                return
            if isinstance(reply, int):
                self.send_error(reply)
                return
            data = json.dumps({"choices": [{"message": {"role": "assistant", "content": reply}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):  # keep the test output quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.requests, server.reply = [], prefer_good
    server.url = f"http://127.0.0.1:{server.server_port}/v1"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def llm(endpoint, monkeypatch) -> dict:
    monkeypatch.setenv("JUDGE_KEY", KEY)
    monkeypatch.setattr(judges, "BACKOFF_S", 0.0)
    return {
        "kind": "llm",
        "model": "judge-model",
        "base_url": endpoint.url,
        "api_key_env": "JUDGE_KEY",
        "timeout_s": 0.2,
    }


def asked(endpoint) -> list[tuple[str, str, str]]:
    return sorted(QUESTION.search(r["body"]["messages"][0]["content"]).groups() for r in endpoint.requests)


def test_llm_judge_asks_both_orders_and_counts_malformed_answers(endpoint, llm):
    prompts = ["p0", "p1", "tricky", "p3"]
    first, second = [" good", " poor", " x", " same"], [" poor", " good", " y", " same"]
    verdicts = compare(llm, prompts, first, second)
    assert verdicts.outcome.tolist() == [1.0, 0.0, 0.5, 0.5]
    assert verdicts.malformed.tolist() == [0, 0, 2, 0]
    # Both orders of every comparison, and none for identical continuations.
    both_orders = [(p, a, b) for p, f, s in zip(prompts[:3], first, second) for a, b in [(f, s), (s, f)]]
    assert asked(endpoint) == sorted(both_orders)
    for request in endpoint.requests:
        assert request["path"] == "/v1/chat/completions"
        assert request["auth"] == f"Bearer {KEY}"
        assert request["body"]["model"] == "judge-model"


def test_position_bias_cancels(endpoint, llm):
    endpoint.reply = lambda prompt, a, b: "A"
    verdicts = compare(llm, ["p0", "p1"], [" good", " poor"], [" poor", " good"])
    assert verdicts.outcome.tolist() == [0.5, 0.5]
    assert verdicts.malformed.tolist() == [0, 0]


@pytest.mark.parametrize(
    "answer, choice",
    [
        ("A", "A"),
        (" b.\n", "B"),
        ("**Response A**", "A"),
        ("Answer: B", "B"),
        ("Response B is better.", "B"),
        ("(a)", "A"),
        ("A or B", None),
        ("Both are fine", None),
        ("I think A", None),
        ("", None),
    ],
)
def test_answers_are_parsed_tolerantly(answer, choice):
    assert judges._parse_choice(answer) == choice


def test_timeouts_and_overload_are_retried(endpoint, llm):
    replies = iter([None, 503])  # a timeout, then overload, then the answer
    endpoint.reply = lambda prompt, a, b: next(replies, "A")
    assert compare({**llm, "max_workers": 1}, ["p"], [" x"], [" y"]).outcome.tolist() == [0.5]
    assert len(endpoint.requests) == 4  # three attempts for the first order, one for the second


def test_a_failing_endpoint_stops_with_an_error_that_hides_the_key(endpoint, llm):
    endpoint.reply = lambda prompt, a, b: 500
    with pytest.raises(JudgeError, match="no answer after 3 attempts"):
        compare({**llm, "max_workers": 1}, ["p0", "p1", "p2"], [" x"] * 3, [" y"] * 3)
    # Three attempts at the first question, and at most the one question the worker had already started: the
    # other four are cancelled.
    assert len(endpoint.requests) in (3, 6)
    endpoint.reply = lambda prompt, a, b: 401  # a refused key is not retried
    with pytest.raises(JudgeError, match=r"HTTP 401.*\$JUDGE_KEY") as refused:
        compare(llm, ["p"], [" x"], [" y"])
    assert KEY not in str(refused.value)


def write_evaluation_inputs(tmp_path) -> list[str]:
    """Prompts, training pairs, one selection and samples of a model and its opponent; the evaluate arguments."""
    pd.DataFrame({"prompt": ["p0", "tricky"]}).to_json(tmp_path / "prompts.jsonl", orient="records", lines=True)
    pd.DataFrame({"id": ["x", "y"]}).to_parquet(tmp_path / "train.parquet")
    pd.DataFrame({"id": ["x", "y"], "selected": [True, False]}).to_parquet(tmp_path / "sel.parquet")
    samples = {"model": [" good", " a"], "opponent": [" poor", " b"]}
    for name, continuations in samples.items():
        frame = pd.DataFrame({"prompt_index": [0, 1], "sample": [0, 0], "continuation": continuations})
        frame.to_parquet(tmp_path / f"{name}.parquet")
    return [
        "evaluate",
        "--names",
        "m",
        "--selections",
        str(tmp_path / "sel.parquet"),
        "--samples",
        str(tmp_path / "model.parquet"),
        "--opponent",
        str(tmp_path / "opponent.parquet"),
        "--prompts",
        str(tmp_path / "prompts.jsonl"),
        "--data",
        str(tmp_path / "train.parquet"),
        "--out-json",
        str(tmp_path / "results.json"),
        "--out-md",
        str(tmp_path / "results.md"),
    ]


def test_evaluate_step_reports_malformed_answers_and_never_the_key(endpoint, llm, tmp_path, caplog, capfd):
    replies = iter([503])  # a retry, so that something is logged
    endpoint.reply = lambda prompt, a, b: next(replies, None) or prefer_good(prompt, a, b)
    caplog.set_level("DEBUG")
    main(write_evaluation_inputs(tmp_path) + config_arg(evaluation={"judge": llm}))
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["selectors"]["m"]["win_rate"] == 0.75  # wins on p0, a tie on the malformed prompt
    assert results["selectors"]["m"]["malformed"] == 2
    assert results["judge"]["api_key_env"] == "JUDGE_KEY"
    assert "attempt 1 of 3 failed" in caplog.text
    captured = capfd.readouterr()
    for text in (caplog.text, captured.out, captured.err, *(p.read_text() for p in tmp_path.glob("results.*"))):
        assert KEY not in text


# Reward model ---------------------------------------------------------------------------------------------------


def test_reward_model_judge_prefers_the_higher_reward(reward_model):
    judge = {"kind": "reward_model", "model": reward_model, "batch_size": 2}  # batches of unequal lengths: padding
    prompts = ["The film", "The film", "A plot", "It"]
    first = [" was fun!", " was dull.", " so bad", " was a joy to watch from start to finish!"]
    second = [" was dull and the cast was bad.", " was great fun!", " so bad", " is"]
    assert compare(judge, prompts, first, second).outcome.tolist() == [1.0, 0.0, 0.5, 1.0]


def test_reward_model_renders_a_chat_prompt_with_the_chat_template(reward_model):
    chat = [{"role": "user", "content": "The film"}]
    judge = {"kind": "reward_model", "model": reward_model}
    verdicts = compare(judge, [chat, chat], [" was fun!", " was dull."], [" was dull.", " was fun!"])
    assert verdicts.outcome.tolist() == [1.0, 0.0]
    tokenizer = AutoTokenizer.from_pretrained(reward_model)
    assert tokenizer.decode(judges._reward_input(tokenizer, chat, " was fun!")) == "<user>The film<assistant> was fun!"
    tokenizer.chat_template = None
    with pytest.raises(ValueError, match="chat template"):
        judges._reward_input(tokenizer, chat, " was fun!")


# VADER and win rates --------------------------------------------------------------------------------------------


def test_vader_judge_prefers_the_positive_continuation():
    verdicts = compare(
        "vader",
        ["The movie", "The movie"],
        [" was wonderful, I loved it", " was awful"],
        [" was awful and boring", " was awful"],
    )
    assert verdicts.outcome.tolist() == [1.0, 0.5]
    assert verdicts.malformed.tolist() == [0, 0]


def test_win_rates_pair_samples_and_cluster_the_interval_by_prompt():
    opponent = pd.DataFrame({"prompt_index": [0, 0, 1, 1], "sample": [0, 1, 0, 1], "continuation": [" was bad"] * 4})
    model = opponent.assign(continuation=[" was great", " was great", " was bad", " was bad, awful and horrible"])
    rates = win_rates("vader", ["It", "This"], {"m": model.iloc[::-1]}, opponent)["m"]  # row order does not matter
    assert rates == {**win_rate([1.0, 1.0, 0.5, 0.0], [0, 0, 1, 1]), "malformed": 0}
    half_width = 1.96 * pd.Series([1.0, 0.25]).std() / 2**0.5  # over the two per-prompt means
    assert rates["win_rate"] == 0.625 and rates["ci_high"] == pytest.approx(0.625 + half_width)
