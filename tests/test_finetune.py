"""LoRA fine-tuning on the CPU and the engine's adapters: real torch training on a few short records,
the GGUF export, and the engine's logits under the adapter against the torch model's."""
import dataclasses
import json
import os
import stat

import numpy as np
import pytest

import cogenesis_device as cg
from cogenesis_device import _native
from cogenesis_device.errors import InvalidParameterError, MissingFileError, ModelLoadError, StateError

from conftest import THREADS

RECORDS = [
    {"instruction": "Write a note to my neighbour about the fence.", "context": "Name: Ada\nCity: Leeds\nHobby: rowing",
     "answer": "Hi Tom, the fence by the garden needs fixing; shall we split the cost? Ada"},
    {"instruction": "Write a short thank-you message.", "context": "Name: Ben\nJob: baker",
     "answer": "Thanks so much for the flowers, they brighten up the bakery! Ben"},
    {"instruction": "Write a reminder for the club.", "context": "Name: Cy\nClub: chess",
     "gold": "Reminder: chess club meets Thursday at six. Bring your boards. Cy"},
]
RANK, ALPHA = 4, 16.0


def write_jsonl(path, lines) -> str:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return str(path)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, model):
    """Three epochs on three records (nothing held out), and the folder they wrote."""
    pytest.importorskip("peft", reason="fine-tuning needs peft (pip install '.[finetune]')")
    pytest.importorskip("gguf", reason="the adapter export needs gguf (pip install '.[finetune]')")
    from cogenesis_device.eval.finetune import FinetuneConfig, Finetuner, read_records

    out = tmp_path_factory.mktemp("finetune") / "run"
    records = read_records(write_jsonl(out.parent / "records.jsonl", RECORDS))
    config = FinetuneConfig(rank=RANK, alpha=ALPHA, learning_rate=3e-3, epochs=3, held_out=0, threads=THREADS)
    result = Finetuner(model, config, progress=False).run(records, out)
    return records, config, result, out


def test_records_are_refused_line_by_line_without_their_text(tmp_path):
    from cogenesis_device.eval.finetune import read_records

    secret = "Canary-Context-7731"
    path = write_jsonl(tmp_path / "bad.jsonl", [
        RECORDS[0],
        '{"instruction": "x", "context": "' + secret + '", "answer": ',  # cut off
        {"instruction": "Write.", "context": secret},
        {"instruction": "Write.", "context": ["Name: Ada"], "answer": "Hi"},
        {"instruction": "  ", "context": secret, "answer": "Hi"},
        [1, 2],
        RECORDS[1],
    ])
    with pytest.raises(InvalidParameterError) as err:
        read_records(path)
    message = str(err.value)
    assert "5 bad record(s)" in message
    for expected in ("line 2: not JSON", "line 3: no 'answer'", "line 4: 'context' is a list, not a string",
                     "line 5: empty 'instruction'", "line 6: a JSON list, not an object"):
        assert expected in message
    assert "line 1" not in message and "line 7" not in message
    assert secret not in message  # a record is named by its line, never by its private text


def test_the_dev_split_format_is_read_as_records():
    from cogenesis_device.eval.finetune import read_records
    from pathlib import Path

    dev = Path(__file__).resolve().parents[2] / "shared" / "data" / "context-aware" / "dev.json"
    if not dev.exists():
        pytest.skip(f"the dev split is not at {dev} (../shared/data)")
    records = read_records(dev)
    assert len(records) > 100 and all(r.instruction and r.answer and r.context for r in records[:5])


def test_past_writings_train_as_tasks_of_their_own_and_never_the_held_out_users(tmp_path, model):
    from cogenesis_device.eval.finetune import FinetuneConfig, Finetuner, read_records

    def user(n):  # every text of user n carries its own mark
        return {"tid": str(n), "additional_profile": f"Name: User{n}\nCity: Town{n}",
                "conversations": [{"from": "user", "value": f"Write a toast: for my sister, user {n}."},
                                  {"from": "assistant", "value": f"To my sister! Gold-{n}."}],
                "profile": [{"title": f"Write a poem {k}: about rain", "text": f"Rain falls. Writing-{n}-{k}."}
                            for k in range(3)]}

    path = tmp_path / "dev.json"
    path.write_text(json.dumps([user(n) for n in range(6)]))
    records = read_records(path)
    first = records[0]
    assert [p.instruction for p in first.past] == ["Write a poem 0", "Write a poem 1", "Write a poem 2"]
    assert [p.answer for p in first.past] == [f"Rain falls. Writing-0-{k}." for k in range(3)]
    for k, past in enumerate(first.past):  # leave one out: the other writings and the profile are its context
        assert f"Writing-0-{k}" not in past.context and "User0" in past.context
        assert all(f"Writing-0-{j}" in past.context for j in range(3) if j != k)
        assert "Gold-0" not in past.context and past.line == first.line

    finetuner = Finetuner(model, FinetuneConfig(held_out=2 / 6, past_writings=2), progress=False)
    trained, held = finetuner.training_set(records)
    assert len(held) == 2 and len(trained) == 4 * 3  # each trained record and two of its writings
    held_marks = [f"-{records[i].line - 1}-" for i in held]
    trained_text = " ".join(r.answer + r.context for r in trained)
    assert not any(mark in trained_text for mark in held_marks)  # a held-out user's writings never trained on
    assert all(f"Gold-{records[i].line - 1}" not in trained_text for i in held)
    assert len(Finetuner(model, FinetuneConfig(held_out=2 / 6), progress=False).training_set(records)[0]) == 4


def test_training_lowers_the_loss_and_writes_a_private_gguf_adapter(trained):
    _, _, result, out = trained
    losses = [r.train_loss for r in result.epochs[1:]]
    assert len(losses) == 3 and losses[2] < losses[0] * 0.8, losses
    for path in (result.adapter, out / "checkpoint.pt", out / "history.jsonl"):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o700
    assert result.adapter.read_bytes()[:4] == b"GGUF"


def test_the_engine_under_the_adapter_moves_its_scores_as_the_torch_model_does(trained, model):
    """The exported GGUF LoRA, loaded by the engine, changes the next-token scores as the trained torch
    model's LoRA changes them (the llama layout's Q/K permutation included)."""
    import peft
    import torch

    from cogenesis_device.eval.finetune import TARGET_MODULES, load_torch_model

    records, config, result, out = trained
    tuned = cg.LocalModel(model.path, n_ctx=1024, n_threads=THREADS, adapter=result.adapter)
    torch_model = peft.get_peft_model(load_torch_model(model), peft.LoraConfig(
        r=config.rank, lora_alpha=config.alpha, target_modules=list(TARGET_MODULES)))
    torch_model.load_state_dict(torch.load(out / "checkpoint.pt", weights_only=True)["lora"], strict=False)

    def log_softmax(x):
        x = np.asarray(x, np.float64)
        return x - x.max() - np.log(np.exp(x - x.max()).sum())

    for record in records[:2]:
        prompt = model.private_prompt(record.context, record.instruction)
        engine = {}
        for name, m in (("base", model), ("tuned", tuned)):
            session = m.new_session()
            session.prefill(np.asarray(prompt, np.int32))
            engine[name] = log_softmax(session.logits(0))
        with torch.no_grad():
            torch_tuned = log_softmax(torch_model(torch.tensor([prompt])).logits[0, -1].numpy())
            with torch_model.disable_adapter():
                torch_base = log_softmax(torch_model(torch.tensor([prompt])).logits[0, -1].numpy())
        top = np.argsort(-torch_tuned)[:50]
        engine_shift, torch_shift = engine["tuned"][top] - engine["base"][top], torch_tuned[top] - torch_base[top]
        assert np.abs(torch_shift).max() > 1.0  # the adapter does change the scores
        assert np.corrcoef(engine_shift, torch_shift)[0, 1] > 0.98
        assert np.abs(engine_shift - torch_shift).max() < 0.25 * np.abs(torch_shift).max()
        assert engine["tuned"].argmax() == torch_tuned.argmax()


def test_a_finished_run_goes_on_for_more_epochs_and_refuses_other_records(trained, model, tmp_path):
    from cogenesis_device.eval.finetune import Finetuner

    records, config, result, out = trained
    copy = tmp_path / "run"
    copy.mkdir(mode=0o700)
    (copy / "checkpoint.pt").write_bytes((out / "checkpoint.pt").read_bytes())
    longer = Finetuner(model, dataclasses.replace(config, epochs=4), progress=False).run(records, copy)
    assert longer.resumed_from_step == 3 * len(records)
    assert [r.epoch for r in longer.epochs] == [0, 1, 2, 3, 4]
    assert [r.train_loss for r in longer.epochs[1:4]] == [r.train_loss for r in result.epochs[1:]]
    with pytest.raises(InvalidParameterError, match="checkpoint of another run"):
        Finetuner(model, config, progress=False).run(records[:2], copy)


def test_an_adapter_attaches_detaches_and_is_recorded_in_state_files(trained, model, tmp_path, gemma_path):
    _, _, result, _ = trained
    native = model.native
    adapter = _native.Adapter(native, str(result.adapter))
    session = _native.Session(native, n_ctx=256, n_threads=THREADS)
    prompt = np.asarray(model.tokenize("The weather today is"), np.int32)
    session.prefill(prompt)
    base_row = session.logits(0).copy()
    session.set_adapter(adapter, 1.0)
    assert session.adapter is adapter
    assert len(session.seq_tokens()) == 0  # the cache held tokens computed with other weights
    session.prefill(prompt)
    tuned_row = session.logits(0).copy()
    assert np.abs(tuned_row - base_row).max() > 0.1
    state = tmp_path / "tuned.state"
    session.save_state(str(state))
    session.set_adapter(None)
    assert session.adapter is None and len(session.seq_tokens()) == 0
    with pytest.raises(StateError, match="adapter"):
        session.load_state(str(state))
    session.prefill(prompt)
    np.testing.assert_allclose(session.logits(0), base_row, rtol=0, atol=1e-4)
    session.set_adapter(adapter, 1.0)
    session.load_state(str(state))  # the same adapter and scale: the cache is usable again
    with pytest.raises(InvalidParameterError, match="scale"):
        session.set_adapter(adapter, float("nan"))

    with pytest.raises(MissingFileError, match="adapter file not found"):
        _native.Adapter(native, str(tmp_path / "missing.gguf"))
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf at all")
    with pytest.raises(ModelLoadError, match="not a GGUF file"):
        _native.Adapter(native, str(tmp_path / "junk.gguf"))
    with pytest.raises(ModelLoadError, match="not a LoRA adapter for this model"):
        _native.Adapter(_native.Model(str(gemma_path)), str(result.adapter))  # another architecture's shapes
    with pytest.raises(ModelLoadError, match="not a LoRA adapter for this model"):
        _native.Adapter(native, str(model.path))  # a GGUF, but a model, not an adapter
    other = _native.Session(_native.Model(str(gemma_path)), n_ctx=256, n_threads=THREADS)
    with pytest.raises(ValueError, match="another model"):
        other.set_adapter(adapter, 1.0)


def test_the_cli_trains_and_generates_with_the_adapter(tmp_path, capsys):
    pytest.importorskip("peft", reason="fine-tuning needs peft (pip install '.[finetune]')")
    pytest.importorskip("gguf", reason="the adapter export needs gguf (pip install '.[finetune]')")
    from cogenesis_device.cli import main

    data = write_jsonl(tmp_path / "records.jsonl", RECORDS * 2)
    out = tmp_path / "run"
    assert main(["finetune", data, "--out", str(out), "--epochs", "1", "--rank", "2", "--held-out", "0.34", "-q",
                 "-t", str(THREADS), "--max-tokens", "512"]) == 0
    err = capsys.readouterr().err
    assert "epoch 0 (before training): held-out gold" in err and "trained on 4 records (2 held out)" in err
    assert (out / "adapter.gguf").exists()
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [0, 1] and all(h["held_out_bpb"] > 0 for h in history)
    assert main(["generate", "Say hello.", "-n", "4", "--adapter", str(out / "adapter.gguf"), "-t", str(THREADS),
                 "--n-ctx", "256"]) == 0
    bad = write_jsonl(tmp_path / "bad.jsonl", [RECORDS[0], "{oops"])
    assert main(["finetune", bad, "--out", str(tmp_path / "bad-run"), "-q"]) == 1
    assert "line 2: not JSON" in capsys.readouterr().err
