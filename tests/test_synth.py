"""`cogenesis data build`: validators by hand, a build through a scripted server whose replies (valid,
invalid, duplicate) make every count exact, its resumption, and the schemas through the loopback server."""
import json
import threading
from collections import Counter

from contracts import chat_stream, models

from cogenesis_device.eval import datasets
from cogenesis_device.testing import ReplayServer
from cogenesis_device.remote import RemoteModel
from cogenesis_device.eval.data_build import (PORTRAITS, PROFILE, PROFILE_KEYS, SCHEMAS, DataBuilder, response_format,
                                    valid_portraits, valid_profile, valid_tasks)


def test_validators():
    assert valid_portraits('Sure! {"groups": ["nurses, 30-50, night shifts", "x", "teachers, 25-60, two kids"]}') == [
        "nurses, 30-50, night shifts", "teachers, 25-60, two kids"]
    assert valid_portraits("no json") == [] and valid_portraits('{"groups": "one"}') == []
    full = {k: f"{k} value" for k in PROFILE_KEYS}
    assert valid_profile(json.dumps(full)) == {k: f"{k} value" for k in PROFILE_KEYS}
    assert valid_profile(json.dumps({**full, "Privacy_info": "..."})) is None  # the template's placeholder
    assert valid_profile(json.dumps({k: v for k, v in full.items() if k != "Name"})) is None
    tasks = {"tasks": [{"title": "Club newsletter", "description": "A monthly update for the running club"},
                       {"title": "Hi", "description": "too short a title"},
                       {"title": "Thank-you note to the coach", "description": "short"}]}
    assert valid_tasks(json.dumps(tasks)) == ["Club newsletter: A monthly update for the running club"]
    assert response_format("tasks", "json_schema")["json_schema"]["schema"] == SCHEMAS["tasks"]
    assert response_format("tasks", "json_object") == {"type": "json_object", "schema": SCHEMAS["tasks"]}
    assert response_format("tasks", "none") is None


def _complete_values(reply, opening):
    """The values a (possibly cut) JSON reply completed after `opening` ('[' of a list, '{' of an object)."""
    decoder, values = json.JSONDecoder(), []
    at = reply.index(opening) + 1
    while True:
        at = len(reply) - len(reply[at:].lstrip(" \n\t,:"))
        try:
            value, at = decoder.raw_decode(reply, at)
        except ValueError:  # the cut, or the end of the list or object
            return values
        values.append(value)


def test_the_loopback_server_holds_replies_to_the_step_schemas(patient_remote, proxy):
    """The real llama.cpp server applies a step's schema, sent as the builder sends it (json_object + schema),
    as a grammar. Unconstrained, this model lists numbers among the groups and gives the age as a number; held
    to the schema, every value it completes is a string and the profile's keys come in the schema's order.
    Greedy, it repeats one group until max_tokens, so the reply is read up to where it was cut. (How a build
    counts, retries, deduplicates and resumes is checked exactly below, with a scripted server: a 135M model
    rarely completes a build's JSON or writes the 40 words a text needs.)"""
    def ask(step, prompt):
        reply = patient_remote.chat([{"role": "user", "content": prompt}], max_tokens=48, temperature=0.0,
                                    response_format=response_format(step, "json_object"), public=True)
        assert json.loads(proxy.records[-1].body)["response_format"] == {"type": "json_object", "schema": SCHEMAS[step]}
        assert reply.text.lstrip().startswith("{")  # nothing before the JSON: the grammar allows none
        return reply.text

    groups = _complete_values(ask("portraits", PORTRAITS.format(n=2)), "[")
    assert len(groups) >= 2 and all(isinstance(g, str) and len(g) >= 3 for g in groups), groups
    fields = _complete_values(ask("profiles", PROFILE.format(portrait="nurses, 30-50, night shifts")), "{")
    keys, values = fields[0::2], fields[1::2]
    assert len(values) >= 3 and keys[:len(values)] == list(PROFILE_KEYS[:len(values)]), fields
    assert all(isinstance(v, str) and len(v) >= 3 for v in values), fields


WORDS = " ".join(f"word{i}" for i in range(45))  # a text long enough to be accepted (40 words)
PORTRAIT_GROUPS = ["nurses, 30-50, night shifts", "teachers, 25-60, two kids"]


def _profile(name, occupation, privacy="Owes money to a cousin"):
    return json.dumps({k: f"{k} of {name}" for k in PROFILE_KEYS} | {"Name": name, "Occupation": occupation,
                                                                      "Privacy_info": privacy})


def _tasks(who, *, valid=True):
    if not valid:  # titles and descriptions too short: no task passes
        return json.dumps({"tasks": [{"title": "Hi", "description": "x"},
                                     {"title": f"Note for {who}", "description": "short"}]})
    return json.dumps({"tasks": [{"title": f"Newsletter for {who}", "description": "A monthly update for the club"},
                                 {"title": "Hi", "description": "a title of one word is refused"},
                                 {"title": f"Thank-you note from {who}",
                                  "description": "For the coach who helped all season"}]})


class ScriptedBuilderServer(ReplayServer):
    """A chat server that plays the data-building model. reply() answers by step, attempt (the builder's seed)
    and order of arrival: the builder sends the same prompt, at the same seed, for every user of a group."""

    def __init__(self):
        self.fixed = False  # the first build meets invalid and duplicate replies; after fixed, all replies are valid
        self.calls: list[dict] = []
        self._seen: Counter = Counter()
        self._lock = threading.Lock()
        super().__init__({"GET /v1/models": (200, models("builder")), "POST /v1/chat/completions": self._chat})

    def _chat(self, request):
        prompt, seed = request["messages"][0]["content"], request.get("seed")
        with self._lock:
            self.calls.append(request)
            nth = self._seen[(prompt, seed, self.fixed)]
            self._seen[(prompt, seed, self.fixed)] += 1
        return 200, chat_stream("builder", [self.reply(prompt, seed, nth)], usage=False)

    def reply(self, prompt, attempt, nth):
        if prompt.startswith("List 2 different groups"):
            # the first attempt is prose; the second lists the groups and one too short to keep
            return "Here are some groups!" if attempt == 0 else json.dumps({"groups": [*PORTRAIT_GROUPS, "x"]})
        if prompt.startswith("Invent one specific person"):
            nurses = PORTRAIT_GROUPS[0] in prompt
            if self.fixed:
                return _profile("Di Ek", "nurse") if nurses else _profile("Ed Falk", "teacher")
            if nurses:  # the same person twice: the second is a duplicate, and its slot stays open
                return _profile("Ada Lind", "nurse")
            # teachers: one valid person, then the template's placeholder, then prose: that slot is rejected
            return _profile("Cy Dahl", "teacher") if (attempt, nth) == (0, 0) else \
                _profile("Zed", "teacher", privacy="...") if attempt == 0 else "I cannot invent people."
        if prompt.startswith("Here is a person"):
            who = prompt.split("Name: ")[1].split("\n")[0]
            return _tasks(who, valid=self.fixed or who != "Cy Dahl" or attempt == 1)  # Cy's first list fails
        assert prompt.startswith("You are this person"), prompt
        if not self.fixed and "Thank-you note from Cy Dahl" in prompt:
            return "Too short to be a text."  # rejected at both attempts
        return f"{prompt.split(chr(10))[1]} {WORDS}"


def _scripted_build(server, out):
    with RemoteModel(server.base_url, timeout=10, max_retries=0) as remote:
        builder = DataBuilder(remote, out, portraits=2, users=2, tasks=2, attempts=2, max_tokens=300,
                              json_format="json_schema")
        return builder.build(), builder.report


def _prompts(calls, start):
    return [c["messages"][0]["content"] for c in calls if c["messages"][0]["content"].startswith(start)]


def test_build_validates_deduplicates_and_resumes_exactly(tmp_path):
    out = tmp_path / "data"
    with ScriptedBuilderServer() as server:
        path, report = _scripted_build(server, out)
        # portraits: 2 attempts; profiles: 4 slots, then the 1 rejected at its first attempt; tasks: 2 users, then
        # Cy's retry; texts: 4 tasks, then the short one's retry
        assert report.requests == len(server.calls) == 2 + 5 + 3 + 5
        assert report.rejected == {"portraits": 0, "profiles": 1, "tasks": 0, "texts": 1}
        assert report.duplicates == 1  # Ada, twice
        assert report.counts == {"users": 2, "tasks": 4, "texts": 3} and report.samples == 3
        # the structured steps carry their schema; the texts are free
        for call in server.calls:
            step = next((name for name, start in (("portraits", "List"), ("profiles", "Invent"), ("tasks", "Here is"))
                         if call["messages"][0]["content"].startswith(start)), None)
            if step is None:
                assert "response_format" not in call
            else:
                assert call["response_format"] == {"type": "json_schema",
                                                   "json_schema": {"name": step, "schema": SCHEMAS[step]}}
        steps = {name: [json.loads(line) for line in (out / f"{name}.jsonl").read_text().splitlines()]
                 for name in ("portraits", "profiles", "tasks", "texts")}
        assert [p["portrait"] for p in steps["portraits"]] == PORTRAIT_GROUPS
        assert sorted(p["profile"]["Name"] for p in steps["profiles"]) == ["Ada Lind", "Cy Dahl"]
        assert all(set(p["profile"]) == set(PROFILE_KEYS) for p in steps["profiles"])
        assert sorted(t["task"].partition(":")[0] for t in steps["tasks"]) == [
            "Newsletter for Ada Lind", "Newsletter for Cy Dahl", "Thank-you note from Ada Lind",
            "Thank-you note from Cy Dahl"]
        # dataset.json is what the loader reads: one sample per written text, the user's profile as its context
        samples = datasets.load(path)
        assert len(samples) == 3
        texts = {t["key"]: t["text"] for t in steps["texts"]}
        tasks = {t["key"]: t["task"] for t in steps["tasks"]}
        assert sorted((s.task, s.gold) for s in samples) == sorted((tasks[k], v) for k, v in texts.items())
        assert all(s.profile["Name"] in s.task and s.gold.endswith(WORDS) for s in samples)
        saved = {name: (out / f"{name}.jsonl").read_text() for name in steps}

        # A rerun asks for exactly what is missing: the duplicate's and the rejected slot's profiles, the tasks of
        # the two new users, the rejected text and the new users' four texts. Nothing accepted is asked again.
        server.fixed, server.calls = True, []
        path, again = _scripted_build(server, out)
        assert again.requests == len(server.calls) == 2 + 2 + 5
        assert not _prompts(server.calls, "List")
        assert sorted(c.split("group: ")[1].split("\n")[0] for c in _prompts(server.calls, "Invent")) == PORTRAIT_GROUPS
        users = sorted(c.split("Name: ")[1].split("\n")[0] for c in _prompts(server.calls, "Here is"))
        assert users == ["Di Ek", "Ed Falk"]
        asked = [c.split("\n\n")[1] for c in _prompts(server.calls, "You are this person")]
        assert sum("Cy Dahl" in c for c in _prompts(server.calls, "You are this person")) == 1
        assert not any(tasks[k] in a for k in texts for a in asked)  # no text written before is asked for again
        assert again.rejected == {"portraits": 0, "profiles": 0, "tasks": 0, "texts": 0} and again.duplicates == 0
        assert again.counts == {"users": 4, "tasks": 8, "texts": 8} and again.samples == len(datasets.load(path)) == 8
        for name, text in saved.items():  # appended to, never rewritten
            assert (out / f"{name}.jsonl").read_text().startswith(text)

        server.calls = []
        _, third = _scripted_build(server, out)  # nothing is missing now
        assert third.requests == 0 and server.calls == [] and third.samples == 8
