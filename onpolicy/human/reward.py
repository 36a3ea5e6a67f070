"""`human`: people rank a round's samples in a web page, alone or beside a reward that scores the rest.

At the score phase the round's groups (all, or a `share` or `count` of them) go up on the labelling page; the
job prints its address and waits. A person picks each group's best and worst answer, or calls them all equally
good or bad. A label scores the best 1, the worst 0 and the others 0.5, so that the best and the worst become
the round's pair; a tie scores every answer 0.5 (no pair). Groups unlabelled by the deadline (`timeout_s`) fail
with kind "unlabelled" and are left out, like any failed score.

With a `fallback` reward (a judge, a reward model: reward terms like the job's), people label part of each
round and the fallback scores the rest. The fallback also scores the groups people labelled: `agreement` is the
share of them where it ranks the people's best answer above their worst (a tie counts half), so a user can see
whether the fallback can be trusted alone.
"""

from __future__ import annotations

import ipaddress
import math
import random
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from onpolicy.errors import OnpolicyError
from onpolicy.human.desk import LabelDesk, Task
from onpolicy.human.label_studio import GROUPS_FILE
from onpolicy.human.labels import Label, LabelBook, answers_digest
from onpolicy.human.page import PageServer, check_free
from onpolicy.run.rundir import LABELS_FILE, RunDirectory
from reward import Failed, Meter, Needs, RewardConfigError, RoundGroups, Score, WeightedSum, register
from reward.guarded import guarded_scores


def _needs(args: Mapping[str, Any]) -> Needs:
    """People and the page it serves; without a fallback it scores nothing but what it showed them."""
    return Needs(people=True, shown_only=args["fallback"] is None, close=True, rewards=("fallback",))


@register("human", needs=_needs)
class HumanReward:
    """Scores from people's labels given in the labelling page (see the module docstring). Registered here, by
    onpolicy (whose job serves the page), beside the `reward` package's built-ins."""

    name = "human"

    def __init__(
        self,
        share: float = 1.0,
        count: int | None = None,
        timeout_s: float | None = None,
        host: str = "127.0.0.1",
        port: int = 8765,
        lease_s: float = 600.0,
        fallback: WeightedSum | None = None,
    ) -> None:
        if not 0 < share <= 1:
            raise RewardConfigError(f"human: share must be in (0, 1], got {share}")
        if count is not None and count < 1:
            raise RewardConfigError(f"human: count must be at least 1, got {count}")
        if timeout_s is not None and timeout_s <= 0:
            raise RewardConfigError(
                f"human: timeout_s must be positive (or null: wait for every label), got {timeout_s}"
            )
        if not 0 <= port <= 65535:
            raise RewardConfigError(f"human: port must be 0 (any free one) to 65535, got {port}")
        if port:  # a busy port is found now, not after the models load and the first round is sampled
            try:
                check_free(host, port)
            except OnpolicyError as exc:
                raise RewardConfigError(str(exc)) from None
        if (share < 1 or count is not None) and fallback is None:
            raise RewardConfigError(
                "human: people label only some groups (share < 1 or count), so the others need a fallback reward: "
                "give args.fallback, a list of reward terms like the job's"
            )
        self.share, self.count, self.timeout_s = share, count, timeout_s
        self.host, self.port = host, port
        self.fallback = fallback
        self.desk = LabelDesk(lease_s)
        self._page: PageServer | None = None
        # this round's groups for people, by (prompt id, answers digest): their keys, in order (a prompt twice in a
        # round can have the same answers twice), and how often each was asked for (a scoring retried after another
        # reward failed asks again: it gets the same labels, in the same order)
        self._people: dict[tuple[str, str], list[str]] = {}
        self._asked: Counter[tuple[str, str]] = Counter()
        self._counted: set[str] = set()  # groups whose label (or its absence) is in the counters
        self._should_stop: Any = lambda: False
        self._meter = Meter()

    def prepare(self, round_groups: RoundGroups) -> None:
        """Put this round's groups for people on the page (starting it the first time)."""
        if self.fallback is not None:
            self.fallback.prepare(round_groups)
        tasks = self._tasks_for_people(round_groups)
        self._people, self._asked, self._counted = {}, Counter(), set()
        for task in tasks:
            self._people.setdefault((str(task.prompt.get("id")), task.digest), []).append(task.group)
        self._should_stop = round_groups.should_stop
        if not tasks:
            self.desk.close_round()
            return
        RunDirectory(round_groups.folder).write_jsonl(GROUPS_FILE, (task.view() for task in tasks))  # for export
        book = LabelBook(round_groups.folder / LABELS_FILE)
        left = self.desk.open_round(round_groups.round, book, tasks, self.timeout_s)
        if self._page is None:
            self._page = PageServer(self.desk, self.host, self.port)
            self._page.start()
            round_groups.echo(
                f"  labelling page: {self._page.link}\n"
                "  (the link holds the page's token: share it only with the people who label)"
            )
            if not _is_loopback(self.host):
                round_groups.echo(f"  the page listens on {self.host}: whoever reaches it with the link can label")
        deadline = f", deadline {self.timeout_s:g}s" if self.timeout_s is not None else ""
        round_groups.echo(
            f"  round {round_groups.round}: {left} of {len(tasks)} group(s) to label at {self._page.address}{deadline}"
        )

    def score_group(self, prompt: Mapping[str, Any], responses: Sequence[str]) -> list[Score]:
        key = (str(prompt.get("id")), answers_digest(responses))
        groups = self._people.get(key)
        if not groups:  # not one of the round's groups for people: the fallback's
            if self.fallback is None:
                return [Failed("the human reward scores only the round's groups shown to people", "unlabelled")] * len(
                    responses
                )
            return self.fallback.score_group(prompt, responses)
        group = groups[self._asked[key] % len(groups)]
        self._asked[key] += 1
        with self._meter.timed("wait_s"):
            label = self.desk.wait(group, self._should_stop)
        if group not in self._counted:  # asked again (a retried scoring): same answer, counted once
            self._counted.add(group)
            self._count(label, prompt, responses)
        if label is None:
            reason = (
                "the job was asked to stop"
                if self._should_stop()
                else f"no label by the deadline ({self.timeout_s:g}s)"
                if self.timeout_s is not None
                else "labelling closed"
            )
            return [Failed(f"group {group}: {reason}", "unlabelled")] * len(responses)
        return list(label.scores())

    def _count(self, label: Label | None, prompt: Mapping[str, Any], responses: Sequence[str]) -> None:
        """A group's label in the counters, and whether the fallback ranks people's pick the same way."""
        if label is None:
            self._meter.add(unlabelled=1)
            return
        self._meter.add(labelled=1, ties=float(label.tie))
        if self.fallback is not None and not label.tie:
            agree = _agreement(guarded_scores(self.fallback, prompt, responses), label.best, label.worst)
            if agree is not None:
                self._meter.add(compared=1, agree=agree)

    def finish(self) -> None:
        """The round's scoring is over: the page stops offering its groups."""
        self.desk.close_round()
        self._people, self._asked, self._counted = {}, Counter(), set()
        if self.fallback is not None:
            self.fallback.finish()

    def take_stats(self) -> dict[str, float]:
        """labelled, ties, unlabelled, wait_s; with a fallback its own counters and `agreement`."""
        counts = self._meter.take()
        compared, agree = counts.pop("compared", 0.0), counts.pop("agree", 0.0)
        stats = {"labelled": 0.0, "unlabelled": 0.0, **counts}
        if self.fallback is not None:
            stats.update(self.fallback.take_stats())
            if compared:
                stats["agreement"] = agree / compared
        return stats

    def close(self) -> None:
        self.desk.close_round()
        if self._page is not None:
            self._page.stop()
            self._page = None
        if self.fallback is not None:
            self.fallback.close()

    def _tasks_for_people(self, round_groups: RoundGroups) -> list[Task]:
        """The groups people label this round: all, or `count` / a `share` of them drawn at random (the same
        draw when a resumed job runs the round again)."""
        tasks, seen = [], set()
        for prompt, responses in round_groups.groups:
            key = str(prompt.get("id"))
            n = 2
            while key in seen:  # a prompt twice in one round (prompts.per_round wraps around)
                key, n = f"{prompt.get('id')}#{n}", n + 1
            seen.add(key)
            tasks.append(Task(key, prompt, tuple(responses)))
        wanted = self.count if self.count is not None else math.ceil(self.share * len(tasks))
        if wanted >= len(tasks):
            return tasks
        chosen = set(random.Random(f"human-{round_groups.round}").sample(range(len(tasks)), wanted))
        return [task for i, task in enumerate(tasks) if i in chosen]


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _agreement(model_scores: Sequence[float | Failed], best: int, worst: int) -> float | None:
    """1 when the model scores people's best above their worst, 0 below, 0.5 equal; None when it failed on one."""
    high, low = model_scores[best], model_scores[worst]
    if isinstance(high, Failed) or isinstance(low, Failed):
        return None
    return 0.5 if high == low else float(high > low)
