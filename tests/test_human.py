"""People as the judge: the label desk's leases and deadline, the `human` reward alone and beside a fallback, and
the labelling page driven in a real headless Chromium (clicks and keys, two labellers, the token, a model
answer carrying HTML)."""

from __future__ import annotations

import contextlib
import json
import pathlib
import re
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from onpolicy.cli import main
from onpolicy.human.desk import LabelDesk, LabelRefused, Task
from onpolicy.human.label_studio import EQUAL, export_tasks, import_annotations, labeling_config
from onpolicy.human.labels import Label, LabelBook, answers_digest
from onpolicy.human.page import PageServer
from onpolicy.human.reward import HumanReward
from reward import (
    Failed,
    Needs,
    Response,
    RewardConfigError,
    RoundGroups,
    Term,
    WeightedSum,
    build_reward,
    reward_needs,
)
from reward.guarded import guarded_batch

DATA = pathlib.Path(__file__).parent / "data"
ANSWERS = {
    "q1": ["Paris is the capital of France.", "London.", "I do not know."],
    "q2": ["Two plus two is four.", "Five.", "It depends on the base.\n\n- base 3: `11`\n- base 10: **4**"],
    "q3": ["Hello!", "Hi there, how can I help?", "Greetings."],
}


def groups(answers: dict[str, list[str]] = ANSWERS) -> list[tuple[dict, list[Response]]]:
    return [
        (
            {"id": key, "prompt": f"Question {key}?", "messages": [{"role": "user", "content": f"Question {key}?"}]},
            [Response(text, truncated=(i == 1), num_tokens=len(text.split())) for i, text in enumerate(texts)],
        )
        for key, texts in answers.items()
    ]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def tasks() -> list[Task]:
    return [Task(prompt["id"], prompt, tuple(answers)) for prompt, answers in groups()]


def test_each_group_goes_to_one_labeller_until_its_lease_runs_out(tmp_path):
    clock = Clock()
    desk = LabelDesk(lease_s=60, clock=clock)
    assert desk.open_round(1, LabelBook(tmp_path / "labels.jsonl"), tasks(), timeout_s=None) == 3
    ana, ben = desk.claim("ana"), desk.claim("ben")
    assert (ana.group, ben.group) == ("q1", "q2")
    assert desk.claim("ana").group == "q1"  # a reload gives back the group held, not another
    assert desk.state("ana")["being_labelled"] == 2
    clock.now += 61  # both walked away: their groups go back to the others
    assert desk.claim("cleo").group == "q1"
    with pytest.raises(LabelRefused, match="^someone else is labelling this group now; take the next one$"):
        desk.submit("ana", "q1", ana.digest, 0, 2)  # ana's lease ran out, and cleo holds the group now
    desk.submit("cleo", "q1", ana.digest, 0, 2)
    with pytest.raises(LabelRefused, match="^someone else has labelled this group already; take the next one$"):
        desk.submit("ana", "q1", ana.digest, 1, 2)  # the refusal does not say who
    with pytest.raises(LabelRefused, match="^you have labelled this group already"):
        desk.submit("cleo", "q1", ana.digest, 1, 2)
    assert desk.claim("cleo").group == "q2"  # cleo moves on
    desk.release("cleo", "q2")  # skipped: cleo gets the next group, dan the one she gave back
    assert desk.claim("cleo").group == "q3"
    assert desk.claim("dan").group == "q2"
    desk.release("cleo", "q3")
    assert desk.claim("cleo").group == "q3"  # nothing else left: the skipped group comes back
    with pytest.raises(LabelRefused, match="no longer open"):
        desk.submit("dan", "q2", "0" * 16, 0, 1)  # other answers than those shown
    with pytest.raises(LabelRefused, match="must differ"):
        desk.submit("dan", "q2", desk.claim("dan").digest, 1, 1)
    with pytest.raises(LabelRefused, match="give your name"):
        desk.claim("  ")
    state = desk.state("cleo")
    assert (state["labelled"], state["left"], state["mine"]) == (1, 2, 1)


def test_a_group_leased_to_someone_is_theirs_to_label_and_the_skip_list_holds_only_the_round_s_groups(tmp_path):
    clock = Clock()
    desk = LabelDesk(lease_s=60, clock=clock)
    desk.open_round(1, LabelBook(tmp_path / "labels.jsonl"), tasks(), timeout_s=None)
    ana = desk.claim("ana")
    with pytest.raises(LabelRefused, match="^someone else is labelling this group now"):
        desk.submit("ben", ana.group, ana.digest, 0, 1)
    clock.now += 61  # ana's lease ran out: whoever labels it first counts
    desk.submit("ben", ana.group, ana.digest, 0, 1)
    for n in range(1000):
        desk.release("ben", f"made-up-{n}")
    assert desk._skipped.get("ben", set()) == set()


def test_a_label_imported_while_the_page_is_open_wins_over_a_later_one_and_neither_is_written_twice(tmp_path):
    desk = LabelDesk(lease_s=60)
    book = tmp_path / "labels.jsonl"
    desk.open_round(1, LabelBook(book), tasks(), timeout_s=None)
    ana = desk.claim("ana")
    imported = Label(ana.group, 3, 2, 0, "label-studio", answers=ana.digest)
    assert LabelBook(book).add(imported) is imported  # `onpolicy label import`, in another process
    with pytest.raises(LabelRefused, match="^someone else has labelled this group already"):
        desk.submit("ana", ana.group, ana.digest, 0, 1)
    assert len(book.read_text().splitlines()) == 1
    assert LabelBook(book).add(Label(ana.group, 3, 0, 1, "again", answers=ana.digest)) == imported


def test_the_page_reads_no_more_than_its_body_cap_of_a_request_without_its_token(tmp_path):
    import http.client

    from onpolicy.human.page import MAX_BODY_BYTES

    desk = LabelDesk()
    desk.open_round(1, LabelBook(tmp_path / "labels.jsonl"), tasks(), timeout_s=None)
    server = PageServer(desk, "127.0.0.1", 0)
    server.start()
    try:
        for headers, body in (
            ({"Content-Length": str(10 * 1024**3)}, b"{"),  # says 10 GiB: refused before a byte is read
            ({}, iter([b"x" * 8192] * (MAX_BODY_BYTES // 8192 + 2))),  # chunked: says nothing of its length
        ):
            connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
            connection.request(
                "POST", "/api/label", body, {"Content-Type": "application/json", **headers}, encode_chunked=not headers
            )
            answer = connection.getresponse()
            assert answer.status == 413, answer.read()
            connection.close()
        long_name = {"labeller": "x" * 5000, "group": "q1", "digest": "0" * 16}
        token = {"X-Onpolicy-Token": server.token, "Content-Type": "application/json"}
        request = urllib.request.Request(server.address + "api/label", json.dumps(long_name).encode(), token)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request)
        assert refused.value.code == 422
    finally:
        server.stop()


def test_a_labeller_s_name_is_bound_to_their_browser_and_a_refusal_names_no_other_labeller(tmp_path):
    desk = LabelDesk()
    desk.open_round(1, LabelBook(tmp_path / "labels.jsonl"), tasks(), timeout_s=None)
    server = PageServer(desk, "127.0.0.1", 0)
    server.start()

    def post(path: str, body: dict) -> tuple[int, dict]:
        headers = {"X-Onpolicy-Token": server.token, "Content-Type": "application/json"}
        request = urllib.request.Request(f"{server.address}api/{path}", json.dumps(body).encode(), headers)
        try:
            with urllib.request.urlopen(request) as answer:
                return answer.status, json.load(answer)
        except urllib.error.HTTPError as refused:
            return refused.code, json.load(refused)

    try:
        status, ana = post("claim", {"labeller": "ana"})  # a name's first claim binds it to this browser
        assert status == 200 and ana["task"]["group"] == "q1" and len(ana["key"]) >= 32
        q1 = {"group": "q1", "digest": ana["task"]["digest"]}
        taken = "the name 'ana' is in use on this page from another browser; give another name"
        for path, body in (("claim", {}), ("label", {**q1, "best": 0, "worst": 1}), ("release", {"group": "q1"})):
            for key in ("", "guess", "é"):  # someone else with the link, as ana
                status, answer = post(path, {"labeller": "ana", "key": key, **body})
                assert (status, answer["detail"]) == (403, taken)
        status, answer = post("label", {"labeller": "cleo", "key": "", **q1, "best": 0, "worst": 1})
        assert status == 403  # a name labels only after it claimed
        status, again = post("claim", {"labeller": " ana ", "key": ana["key"]})
        assert (status, again["task"]["group"], again["key"]) == (200, "q1", ana["key"])  # ana's group, still
        status, ben = post("claim", {"labeller": "ben"})
        status, answer = post("label", {"labeller": "ben", "key": ben["key"], **q1, "best": 0, "worst": 1})
        assert (status, answer["detail"]) == (409, "someone else is labelling this group now; take the next one")
        assert post("label", {"labeller": "ana", "key": ana["key"], **q1, "best": 2, "worst": 0})[0] == 200
        status, answer = post("label", {"labeller": "ben", "key": ben["key"], **q1, "best": 0, "worst": 1})
        assert (status, answer["detail"]) == (409, "someone else has labelled this group already; take the next one")
    finally:
        server.stop()
    labels = [json.loads(line) for line in (tmp_path / "labels.jsonl").read_text().splitlines()]
    assert [(x["group"], x["best"], x["labeller"]) for x in labels] == [("q1", 2, "ana")]


def test_a_resumed_round_opens_with_only_the_groups_unlabelled_for_these_answers(tmp_path):
    book = LabelBook(tmp_path / "labels.jsonl")
    q1, q2, _ = tasks()
    book.add(Label("q1", 3, 0, 2, "ana", answers=q1.digest))
    book.add(Label("q2", 3, 0, 2, "ana", answers=answers_digest(["other", "answers", "generated"])))
    desk = LabelDesk()
    assert desk.open_round(1, book, tasks(), timeout_s=None) == 2
    assert desk.claim("ben").group == "q2"  # its label was of other answers
    assert desk.wait("q1", lambda: False).labeller == "ana"


def test_the_deadline_ends_the_wait_and_refuses_late_labels(tmp_path):
    clock = Clock()
    desk = LabelDesk(clock=clock)
    desk.open_round(1, LabelBook(tmp_path / "labels.jsonl"), tasks(), timeout_s=30)
    task = desk.claim("ana")
    assert desk.state()["deadline_in_s"] == 30
    clock.now += 30
    assert desk.wait("q1", lambda: False) is None and desk.claim("ana") is None
    with pytest.raises(LabelRefused, match="deadline has passed"):
        desk.submit("ana", "q1", task.digest, 0, 1)


@contextlib.contextmanager
def labelling(tmp_path, round_number=1, answers=ANSWERS, **args) -> Iterator[tuple[HumanReward, list[str]]]:
    """A `human` reward on a free port with a round's groups up on its page; the lines it printed."""
    reward = build_reward("human", {"port": 0, **args})
    lines: list[str] = []
    reward.prepare(RoundGroups(round_number, tmp_path, groups(answers), echo=lines.append))
    try:
        yield reward, lines
    finally:
        reward.close()


def link_in(lines: list[str]) -> str:
    """The page's link (with its token), from what the reward printed."""
    return next(match.group() for line in lines if (match := re.search(r"http://\S+#token=\S+", line)))


def scores_in_background(reward: HumanReward, answers=ANSWERS) -> tuple[threading.Thread, list]:
    """The job's side: every group scored in turn, waiting for its label, in a thread; then the round closes."""
    results: list = []

    def score_the_round() -> None:
        try:
            results.extend(reward.score_group(prompt, responses) for prompt, responses in groups(answers))
        finally:
            reward.finish()  # as the loop does once scoring is over

    thread = threading.Thread(target=score_the_round)
    thread.start()
    return thread, results


def test_people_label_a_share_and_the_fallback_scores_the_rest_and_is_checked_against_them(tmp_path):
    # the fallback: longer is better, up to 100 characters (every answer here is shorter)
    fallback = WeightedSum([Term(build_reward("length", {"target": 100, "unit": "chars"}))])
    with labelling(tmp_path, share=0.5, fallback=fallback) as (reward, lines):
        agreeing, disagreeing = reward.desk.claim("ana"), reward.desk.claim("ben")
        assert reward.desk.claim("cleo") is None  # 2 of the 3 groups are for people
        thread, results = scores_in_background(reward)
        for task, who in ((agreeing, "ana"), (disagreeing, "ben")):
            by_length = sorted(range(3), key=lambda i: len(task.answers[i]))
            best, worst = (by_length[-1], by_length[0]) if who == "ana" else (by_length[0], by_length[-1])
            reward.desk.submit(who, task.group, task.digest, best, worst)
        thread.join(10)
        stats = reward.take_stats()
    for (prompt, answers), scores in zip(groups(), results):
        if prompt["id"] in (agreeing.group, disagreeing.group):
            assert sorted(scores) == [0.0, 0.5, 1.0]
        else:
            assert scores == fallback.score_group(prompt, answers)
    assert (stats["labelled"], stats["unlabelled"], stats["agreement"]) == (2, 0, 0.5)
    assert "length/mean" in stats  # the fallback's own counters
    assert any("2 of 2 group(s) to label" in line for line in lines)


def test_the_human_reward_refuses_settings_that_leave_groups_unscored_or_a_busy_port():
    with pytest.raises(RewardConfigError, match="need a fallback reward"):
        build_reward("human", {"share": 0.5})
    with pytest.raises(RewardConfigError, match="timeout_s must be positive"):
        build_reward("human", {"timeout_s": 0})
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(RewardConfigError, match=r"cannot listen on 127.0.0.1:\d+ .*set the human reward's port"):
            build_reward("human", {"port": taken.getsockname()[1]})


def test_the_human_reward_declares_people_a_page_to_close_and_its_fallback_terms():
    alone = reward_needs("human", {})
    assert alone == Needs(people=True, shown_only=True, close=True, rewards=("fallback",))
    assert not reward_needs("human", {"count": 1, "fallback": [{"name": "length"}]}).shown_only


def test_a_prompt_twice_in_a_round_with_the_same_answers_is_labelled_twice(tmp_path):
    twice = groups({"q1": ANSWERS["q1"]}) * 2
    reward = build_reward("human", {"port": 0})
    reward.prepare(RoundGroups(1, tmp_path, twice, echo=lambda line: None))
    try:
        first, second = reward.desk.claim("ana"), reward.desk.claim("ben")
        assert (first.group, second.group) == ("q1", "q1#2")
        reward.desk.submit("ana", "q1", first.digest, 0, 1)
        reward.desk.submit("ben", "q1#2", second.digest, 2, 1)
        assert [reward.score_group(*group) for group in twice] == [[1.0, 0.0, 0.5], [0.5, 0.0, 1.0]]
        reward.finish()
        assert reward.desk.state()["round"] is None  # the page offers nothing once scoring is over
    finally:
        reward.close()


def test_people_s_labels_survive_a_scoring_retried_because_another_term_failed(tmp_path):
    """A term that raises on the chunk fails only its own scores; the labels stay people's, given and counted once."""

    class FlakyInBatches:
        name = "flaky"

        def score_group(self, prompt, responses):
            if prompt["id"] == "q2":
                raise RuntimeError("q2 is out of reach")
            return [1.0] * len(responses)

        def score_groups(self, groups):
            raise RuntimeError("the batch endpoint is down")

    human = build_reward("human", {"port": 0})
    total = WeightedSum([Term(human, needs=reward_needs("human", {})), Term(FlakyInBatches(), 0.5)])
    round_groups = groups()
    total.prepare(RoundGroups(1, tmp_path, round_groups, echo=lambda line: None))
    try:
        picks = {"q1": (0, 1), "q2": (2, 1), "q3": (1, 0)}
        while (task := human.desk.claim("ana")) is not None:
            human.desk.submit("ana", task.group, task.digest, *picks[task.group])
        scored = guarded_batch(total, round_groups)  # as the job scores a chunk: at once, then one by one on a raise
        again = [total.score_group(*group) for group in round_groups]  # and as a retry would ask once more
        total.finish()
        stats = total.take_stats()
    finally:
        total.close()
    assert scored[0] == again[0] == [1.5, 0.5, 1.0] and scored[2] == again[2] == [0.5, 1.5, 1.0]
    assert [score.kind for score in scored[1]] == ["error"] * 3
    assert "flaky: raised RuntimeError: q2 is out of reach" in scored[1][0].reason
    assert (stats["human/labelled"], stats["human/unlabelled"]) == (3, 0)


# ---- the page, in a real browser ----


def open_page(browser, link: str, name: str):
    """A labeller's page: a fresh browser profile, the link opened, the name given."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.goto(link)
    page.fill("#name", name)
    page.click("text=Start")
    return page


def test_a_person_labels_a_round_with_keys_and_clicks_and_the_round_goes_on(tmp_path, browser):
    with labelling(tmp_path) as (reward, lines):
        link = link_in(lines)
        thread, results = scores_in_background(reward)
        page = open_page(browser, link, "ana")
        page.wait_for_selector("text=Question q1?")
        assert page.locator(".answer").count() == 3
        assert "#token" not in page.url  # the token leaves the address bar
        page.keyboard.press("1")  # best: answer 1, then worst: answer 3
        page.keyboard.press("3")
        assert page.locator(".answer.best .verdict").inner_text() == "BEST"
        page.keyboard.press("Enter")
        page.wait_for_selector("text=Question q2?")
        assert page.locator("code", has_text="11").count() == 1  # the answer's markdown, rendered
        page.locator(".answer").nth(1).locator("text=Worst").click()
        page.locator(".answer").nth(0).locator("text=Best").click()
        page.click("#save")
        page.wait_for_selector("text=Question q3?")
        page.keyboard.press("e")  # all equally good
        thread.join(10)
        page.wait_for_selector("text=Waiting for the next round")  # all scored: the round went on
    assert results == [[1.0, 0.5, 0.0], [1.0, 0.0, 0.5], [0.5, 0.5, 0.5]]
    labels = [json.loads(line) for line in (tmp_path / "labels.jsonl").read_text().splitlines()]
    assert [(x["group"], x["best"], x["worst"], x["labeller"]) for x in labels] == [
        ("q1", 0, 2, "ana"),
        ("q2", 0, 1, "ana"),
        ("q3", None, None, "ana"),
    ]


def test_two_labellers_at_once_never_get_the_same_group(tmp_path, browser):
    with labelling(tmp_path) as (reward, lines):
        link = link_in(lines)
        ana, ben = open_page(browser, link, "ana"), open_page(browser, link, "ben")
        ana.wait_for_selector(".answer")
        ben.wait_for_selector(".answer")
        shown = {ana.locator(".turn.last .body").inner_text(), ben.locator(".turn.last .body").inner_text()}
        assert shown == {"Question q1?", "Question q2?"}
        assert "1 being labelled by others" in ben.locator("#others").inner_text()
        for page in (ana, ben):
            page.keyboard.press("2")
            page.keyboard.press("1")
            page.keyboard.press("Enter")
        ana.wait_for_selector("text=Question q3?")  # the one group left goes to whoever asks first
        ben.wait_for_selector("text=Nothing left to label")
        ana.keyboard.press("e")
        ana.wait_for_selector("text=Nothing left to label")
        assert reward.desk.state()["labelled"] == 3
    by = {json.loads(line)["labeller"] for line in (tmp_path / "labels.jsonl").read_text().splitlines()}
    assert by == {"ana", "ben"}


def test_a_name_in_use_in_another_browser_is_refused_and_the_page_asks_for_another(tmp_path, browser):
    with labelling(tmp_path) as (_, lines):
        link = link_in(lines)
        ana = open_page(browser, link, "ana")
        ana.wait_for_selector("text=Question q1?")
        other = open_page(browser, link, "ana")  # another browser profile, giving ana's name
        other.wait_for_selector("text=the name 'ana' is in use on this page from another browser")
        assert other.locator(".answer").count() == 0
        other.fill("#name", "ben")
        other.click("text=Start")
        other.wait_for_selector("text=Question q2?")
        ana.reload()  # ana's browser keeps her name, its key and her group
        ana.wait_for_selector("text=Question q1?")
        ana.keyboard.press("1")
        ana.keyboard.press("2")
        ana.keyboard.press("Enter")
        ana.wait_for_selector("text=Question q3?")
    labels = [json.loads(line) for line in (tmp_path / "labels.jsonl").read_text().splitlines()]
    assert [(x["group"], x["labeller"]) for x in labels] == [("q1", "ana")]


def test_html_in_a_model_answer_is_shown_as_text_and_never_runs(tmp_path, browser):
    hostile = '<script>window.owned = 1</script><img src=x onerror="window.owned = 2"> **bold** and <b>not bold</b>'
    with labelling(tmp_path, answers={"q1": [hostile, "A plain answer."]}) as (_, lines):
        link = link_in(lines)
        page = open_page(browser, link, "ana")
        page.wait_for_selector(".answer")
        first = page.locator(".answer .body").first
        assert "<script>window.owned = 1</script>" in first.inner_text()
        assert page.evaluate("window.owned") is None
        assert first.locator("script, img, b").count() == 0
        assert first.locator("strong").inner_text() == "bold"


def test_the_page_refuses_requests_without_its_token(tmp_path, browser):
    with labelling(tmp_path) as (reward, lines):
        address = link_in(lines).split("#")[0]
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(address + "api/state")
        assert refused.value.code == 401
        forged = urllib.request.Request(address + "api/state", headers={"X-Onpolicy-Token": "guess"})
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(forged)
        with urllib.request.urlopen(address) as served:  # the page itself holds no data: it loads without the token
            policy = served.headers["Content-Security-Policy"]
        assert "script-src 'sha256-" in policy and "frame-ancestors 'none'" in policy and "default-src 'none'" in policy
        page = browser.new_context().new_page()
        page.goto(address + "#token=guess")
        page.fill("#name", "mallory")
        page.click("text=Start")
        page.wait_for_selector("text=This link has no valid token")
        assert reward.desk.state()["being_labelled"] == 0


def test_groups_unlabelled_at_the_deadline_are_left_out(tmp_path, browser):
    with labelling(tmp_path, timeout_s=3) as (reward, lines):
        assert any("deadline 3s" in line for line in lines)
        link = link_in(lines)
        thread, results = scores_in_background(reward)
        page = open_page(browser, link, "ana")
        page.wait_for_selector("text=Question q1?")
        page.keyboard.press("1")
        page.keyboard.press("2")
        page.keyboard.press("Enter")
        thread.join(10)
        page.wait_for_selector("text=Waiting for the next round")
        stats = reward.take_stats()
    assert results[0] == [1.0, 0.0, 0.5]
    assert all(
        isinstance(s, Failed) and s.kind == "unlabelled" and "deadline" in s.reason for s in results[1] + results[2]
    )
    assert (stats["labelled"], stats["unlabelled"]) == (1, 2)


# ---- offline: Label Studio ----


def label_studio_annotation(task: dict, best: str | None, worst: str | None, equal: bool = False) -> dict:
    """What Label Studio's JSON export holds for a task annotated with the exported labeling config."""

    def choice(name: str, value: str) -> dict:
        return {"from_name": name, "to_name": "answers", "type": "choices", "value": {"choices": [value]}}

    result = [choice("equal", EQUAL)] if equal else [choice("best", best), choice("worst", worst)]
    return {
        "id": 7,
        "data": task["data"],
        "annotations": [
            {"result": [choice("best", "Answer 3")], "was_cancelled": True},  # an abandoned try: not the label
            {
                "result": result,
                "was_cancelled": False,
                "completed_by": {"email": "ana@example.com"},
                "created_at": "2026-11-26T12:00:00.000000Z",
            },
        ],
    }


def test_a_round_exported_to_label_studio_comes_back_as_labels_the_waiting_job_takes(tmp_path):
    run_dir = tmp_path
    with labelling(run_dir / "rounds/0001") as (reward, _):
        first = reward.desk.claim("ana")
        reward.desk.submit("ana", first.group, first.digest, 0, 1)  # one group labelled in the page
        tasks, config = export_tasks(run_dir)
        assert [t["data"]["group"] for t in tasks] == ["q2", "q3"]
        assert tasks[0]["data"]["answers"][2] == {"author": "Answer 3", "text": ANSWERS["q2"][2]}
        assert tasks[0]["data"]["messages"] == [{"role": "user", "content": "Question q2?"}]
        assert config.count('<Choice value="Answer 3"/>') == 2 and 'name="equal"' in config
        thread, results = scores_in_background(reward)
        exported = [
            label_studio_annotation(tasks[0], "Answer 2", "Answer 3"),
            label_studio_annotation(tasks[1], None, None, equal=True),
        ]
        exported.append({"id": 9, "data": {**tasks[1]["data"], "digest": "0" * 16}, "annotations": []})
        added, skipped = import_annotations(run_dir, json.loads(json.dumps(exported)))
        thread.join(10)  # the job took the imported labels up without a restart
    assert (added, skipped) == (2, ["task 9: round 1 holds other answers for group 'q3' now"])
    assert import_annotations(run_dir, exported[:1]) == (0, ["task 7: group 'q2' of round 1 is labelled already"])
    assert results == [[1.0, 0.0, 0.5], [0.5, 1.0, 0.0], [0.5, 0.5, 0.5]]
    labels = LabelBook(run_dir / "rounds/0001/labels.jsonl").labels()
    assert labels["q2"].labeller == "label-studio:ana@example.com" and labels["q2"].time == 1795694400.0
    assert export_tasks(run_dir)[0] == [] and len(export_tasks(run_dir, everything=True)[0]) == 3


def test_the_label_commands_round_trip_through_label_studio(tmp_path, capsys):
    """tests/data/label_studio_export.json is Label Studio 1.23.2's JSON export of the tasks `label export` wrote
    for these groups, in a project with the labeling config it wrote, labelled in Label Studio's own UI: q1
    answer 2 best and 3 worst, q2 answer 1 best and 2 worst, q3 all equally good or bad."""
    with labelling(tmp_path / "rounds/0001"):
        pass
    assert main(["label", "export", str(tmp_path)]) == 0
    out = tmp_path / "label-studio/round-0001.json"
    assert "3 task(s)" in capsys.readouterr().out
    assert out.with_suffix(".xml").read_text() == labeling_config(3)
    exported_by_label_studio = json.loads((DATA / "label_studio_export.json").read_text())
    assert [task["data"] for task in exported_by_label_studio] == [task["data"] for task in json.loads(out.read_text())]
    assert main(["label", "import", str(tmp_path), str(DATA / "label_studio_export.json")]) == 0
    assert "3 label(s) added" in capsys.readouterr().out
    labels = LabelBook(tmp_path / "rounds/0001/labels.jsonl").labels()
    assert [(labels[g].best, labels[g].worst) for g in ("q1", "q2", "q3")] == [(1, 2), (0, 1), (None, None)]
    assert labels["q1"].labeller == "label-studio:1"
    bad = tmp_path / "export.json"
    bad.write_text("{not json")
    assert main(["label", "import", str(tmp_path), str(bad)]) == 2
    assert "is not JSON" in capsys.readouterr().err
    assert main(["label", "export", str(tmp_path / "nothing")]) == 2
    assert "no round has groups for people" in capsys.readouterr().err


def test_a_page_on_every_interface_is_announced_under_the_machine_s_name():
    page = PageServer(LabelDesk(), "0.0.0.0", 0)
    try:
        assert page.address == f"http://{socket.gethostname()}:{page.port}/"
        assert page.link == f"{page.address}#token={page.token}"
    finally:
        page.stop()
