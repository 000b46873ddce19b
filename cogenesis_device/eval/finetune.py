"""LoRA fine-tuning of the local model on (instruction, context, answer) records, on the CPU: the
paper's SFT step (its local model is tuned on its synthetic personalized-writing data).

The weights are the engine's own GGUF, read by transformers (dequantized to float32); each record
trains on exactly the prompt the engine builds at inference (LocalModel.private_prompt: the context in
the system turn, the instruction as the user's), with the loss on the answer's tokens and the end of
turn after them. A held-out part of the records, never trained on, is scored before training and
after each epoch in gold bits per byte. The adapter goes out as a GGUF LoRA (lora_export.py) that
`LocalModel(adapter=...)` and the CLI's `--adapter` load into the engine.

Records are private (their contexts): checkpoints and the adapter are written 0600 in a 0700 folder,
and errors name a record by its line, never by its text.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

from ..errors import InvalidParameterError, MissingDependencyError
from ..local import LocalModel, write_private
from . import datasets

# The linear layers LoRA adapts (HF names; lora_export.py maps them onto llama.cpp's).
TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_CHECKPOINT = "checkpoint.pt"
_MAX_LISTED = 20  # bad records named in one error


@dataclass(frozen=True)
class Record:
    """One training example; line: where it is in its file (1-based), for messages. past: the same
    user's past writings as records of their own (Sample.past_tasks), trained on with the record when
    FinetuneConfig.past_writings asks for them, never held out."""

    instruction: str
    context: str
    answer: str
    line: int
    past: tuple["Record", ...] = ()


def read_records(path: str | os.PathLike) -> list[Record]:
    """Records from a JSONL file of {"instruction", "context", "answer"} objects ("gold" may stand for
    "answer", as `cogenesis data build` writes it), or from any file the evaluation reads (the paper's
    dev split: datasets.load). A bad line is refused with its number and what is wrong with it; every
    bad line is listed (up to 20), so one pass finds them all."""
    path = Path(path)
    if not path.is_file():
        raise InvalidParameterError(f"no training data at {path}")
    if path.suffix != ".jsonl":
        return [Record(s.instruction, s.context, s.gold, n, tuple(Record(p.instruction, p.context, p.gold, n)
                                                                 for p in s.past_tasks()))
                for n, s in enumerate(datasets.load(path), 1)]
    records, problems = [], []
    with path.open(encoding="utf-8") as lines:
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            record, problem = _record(line, n)
            if problem:
                problems.append(f"line {n}: {problem}")
            else:
                records.append(record)
    if problems:
        listed = "\n  ".join(problems[:_MAX_LISTED]) + ("\n  ..." if len(problems) > _MAX_LISTED else "")
        raise InvalidParameterError(f"{path}: {len(problems)} bad record(s), none trained on:\n  {listed}")
    if not records:
        raise InvalidParameterError(f"{path} holds no records")
    return records


def _record(line: str, n: int) -> tuple[Record | None, str]:
    try:
        item = json.loads(line)
    except json.JSONDecodeError as exc:
        return None, f"not JSON ({exc.msg} at column {exc.colno})"
    if not isinstance(item, dict):
        return None, f"a JSON {type(item).__name__}, not an object"
    if "answer" not in item and "gold" in item:
        item["answer"] = item["gold"]
    for key in ("instruction", "answer", "context"):
        if key not in item:
            return None, f"no {key!r}"
        if not isinstance(item[key], str):
            return None, f"{key!r} is a {type(item[key]).__name__}, not a string"
    for key in ("instruction", "answer"):
        if not item[key].strip():
            return None, f"empty {key!r}"
    return Record(item["instruction"].strip(), item["context"], item["answer"], n), ""


@dataclass(frozen=True)
class FinetuneConfig:
    """rank, alpha: the LoRA's (its update is scaled by alpha / rank). learning_rate: AdamW's, with a
    linear warm-up over the first 10% of steps and a linear decay to 0. held_out: the share of records
    scored each epoch and never trained on (at least one when there are two or more). max_tokens: the
    longest prompt + answer trained on (longer records are refused by line). bf16: compute in bfloat16
    (torch.autocast) where the CPU has it natively (None: then), about 1.6x faster on this project's
    machine. checkpoint_every: steps between checkpoints (and at each epoch's end). past_writings: how
    many of each trained record's past writings (Record.past) to train on as well; the held-out
    records' are never used, nor scored."""

    rank: int = 8
    alpha: float = 16.0
    learning_rate: float = 1e-3
    epochs: int = 1
    held_out: float = 0.1
    max_tokens: int = 4096
    seed: int = 0
    bf16: bool | None = None
    checkpoint_every: int = 10
    threads: int | None = None
    past_writings: int = 0

    def __post_init__(self):
        problems = [name for name, ok in (("rank", self.rank >= 1), ("alpha", self.alpha > 0),
                                          ("learning_rate", 0 < self.learning_rate < 1), ("epochs", self.epochs >= 1),
                                          ("held_out", 0 <= self.held_out < 1), ("max_tokens", self.max_tokens >= 16),
                                          ("checkpoint_every", self.checkpoint_every >= 1),
                                          ("past_writings", self.past_writings >= 0)) if not ok]
        if problems:
            raise InvalidParameterError(f"out of range: {', '.join(problems)} ({self})")


@dataclass(frozen=True)
class EpochReport:
    epoch: int             # 0: before training
    train_loss: float      # mean loss per answer token over the epoch's steps (nan for epoch 0)
    held_out_bpb: float    # gold bits per byte of the held-out answers (nan when nothing is held out)
    seconds: float         # the epoch's training time (scoring excluded)


@dataclass(frozen=True)
class FinetuneResult:
    adapter: Path                 # the GGUF LoRA
    epochs: list[EpochReport]
    n_train: int                  # examples trained on per epoch, past writings included
    n_held_out: int
    train_seconds: float          # all epochs' training, this run and the ones it resumed
    resumed_from_step: int


def _torch():
    try:
        import peft  # noqa: F401
        import torch
        import transformers  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError(f"fine-tuning needs torch, transformers and peft ({exc.name} is missing): "
                                     "pip install 'cogenesis-device[finetune]'") from None
    return torch


def load_torch_model(local: LocalModel):
    """The local model's GGUF as a transformers model (float32), quietly."""
    _torch()
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    import torch

    return AutoModelForCausalLM.from_pretrained(str(local.path.parent), gguf_file=local.path.name, dtype=torch.float32)


class Finetuner:
    """Trains a LoRA of `local` (a LocalModel: its GGUF, tokenizer and prompt format).

    progress: a tqdm bar on stderr per epoch (the loss in its postfix), when tqdm is installed."""

    def __init__(self, local: LocalModel, config: FinetuneConfig | None = None, *, progress: bool = True):
        self.local, self.config, self.progress = local, config or FinetuneConfig(), progress

    def examples(self, records: Sequence[Record]) -> list[tuple[list[int], list[int]]]:
        """(prompt tokens, answer tokens + end of turn) per record, as the engine tokenizes them."""
        out, problems = [], []
        eos = self.local.native.eos
        for r in records:
            prompt = self.local.private_prompt(r.context, r.instruction)
            answer = self.local.tokenize(r.answer, add_special=False) + [eos]
            if len(prompt) + len(answer) > self.config.max_tokens:
                problems.append(f"line {r.line}: {len(prompt) + len(answer)} tokens, more than max_tokens "
                                f"({self.config.max_tokens})")
            out.append((prompt, answer))
        if problems:
            raise InvalidParameterError("records too long to train on:\n  " + "\n  ".join(problems[:_MAX_LISTED]))
        return out

    def split(self, n: int) -> tuple[list[int], list[int]]:
        """Record indices to train on and to hold out: a shuffle by the seed, the held-out part last."""
        order = list(range(n))
        random.Random(self.config.seed).shuffle(order)
        n_held = 0 if n < 2 or self.config.held_out == 0 else min(n - 1, max(1, round(n * self.config.held_out)))
        return sorted(order[:n - n_held]), sorted(order[n - n_held:])

    def training_set(self, records: Sequence[Record]) -> tuple[list[Record], list[int]]:
        """(the records trained on, the indices of those held out): each trained record followed by up to
        past_writings of its past writings; a held-out record's past writings are its user's and are
        never trained on."""
        train, held = self.split(len(records))
        return [r for i in train for r in (records[i],) + records[i].past[:self.config.past_writings]], held

    def run(self, records: Sequence[Record], out_dir: str | os.PathLike, *,
            on_epoch: Callable[[EpochReport], None] | None = None) -> FinetuneResult:
        """Train (resuming from out_dir's checkpoint when it is of this run), score, export the adapter
        to out_dir/adapter.gguf, and write out_dir/history.jsonl. Returns the epochs' reports."""
        torch = _torch()
        from peft import LoraConfig, get_peft_model

        cfg = self.config
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(out, 0o700)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        trained, held = self.training_set(records)
        examples = self.examples(trained + [records[i] for i in held])
        train, held_examples = list(range(len(trained))), list(range(len(trained), len(examples)))
        fingerprint = self._fingerprint(examples)
        torch.manual_seed(cfg.seed)
        model = get_peft_model(load_torch_model(self.local), LoraConfig(
            r=cfg.rank, lora_alpha=cfg.alpha, target_modules=list(TARGET_MODULES), lora_dropout=0.0, bias="none"))
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=0.0)
        total = cfg.epochs * len(train)
        warmup = max(1, total // 10)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: min((s + 1) / warmup, max(0.0, (total - s) / max(1, total - warmup))))
        bf16 = _bf16_native(torch) if cfg.bf16 is None else cfg.bf16

        state = {"step": 0, "reports": [], "train_seconds": 0.0, "losses": []}
        checkpoint = out / _CHECKPOINT
        if checkpoint.exists():
            saved = torch.load(checkpoint, weights_only=True)  # tensors and plain values only: no pickled code
            if saved.get("fingerprint") != fingerprint:
                raise InvalidParameterError(f"{out} holds a checkpoint of another run (other records or settings): "
                                            "use a new output folder, or delete its checkpoint.pt to start over")
            model.load_state_dict(saved["lora"], strict=False)
            optimizer.load_state_dict(saved["optimizer"])
            schedule.load_state_dict(saved["schedule"])
            state = saved["state"]
        resumed_from = state["step"]

        def save() -> None:
            lora = {k: v for k, v in model.state_dict().items() if "lora_" in k}
            import io

            buffer = io.BytesIO()
            torch.save({"fingerprint": fingerprint, "lora": lora, "optimizer": optimizer.state_dict(),
                        "schedule": schedule.state_dict(), "state": state}, buffer)
            write_private(checkpoint, buffer.getvalue())

        def report(epoch: int, loss: float, seconds: float) -> None:
            r = EpochReport(epoch, loss, self.held_out_bpb(model, [examples[i] for i in held_examples],
                                                           [records[i].answer for i in held], bf16), seconds)
            state["reports"].append(asdict(r))
            save()
            if on_epoch:
                on_epoch(r)

        if not state["reports"]:
            report(0, math.nan, 0.0)
        for epoch in range(state["step"] // max(1, len(train)), cfg.epochs):
            order = list(train)
            random.Random(cfg.seed * 1000 + epoch + 1).shuffle(order)
            start_at = state["step"] - epoch * len(train)
            bar = self._bar(len(order), start_at, f"epoch {epoch + 1}/{cfg.epochs}")
            model.train()
            for i in order[start_at:]:
                began = time.perf_counter()
                prompt, answer = examples[i]
                ids = torch.tensor([prompt + answer])
                labels = torch.tensor([[-100] * len(prompt) + answer])
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    loss = model(input_ids=ids, labels=labels).loss
                loss.backward()
                optimizer.step()
                schedule.step()
                optimizer.zero_grad(set_to_none=True)
                state["step"] += 1
                state["losses"].append(loss.item())
                state["train_seconds"] += time.perf_counter() - began
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{state['losses'][-1]:.3f}")
                if state["step"] % cfg.checkpoint_every == 0:
                    save()
            if bar is not None:
                bar.close()
            epoch_losses = state["losses"][epoch * len(train):(epoch + 1) * len(train)]
            seconds = state["train_seconds"] - sum(r["seconds"] for r in state["reports"])
            report(epoch + 1, sum(epoch_losses) / max(1, len(epoch_losses)), seconds)

        from .lora_export import export_gguf_lora

        adapter = out / "adapter.gguf"
        export_gguf_lora(model, self.local.path, adapter, alpha=cfg.alpha)
        reports = [EpochReport(**r) for r in state["reports"]]
        write_private(out / "history.jsonl", "".join(json.dumps({**asdict(r), "config": asdict(cfg)}) + "\n"
                                                     for r in reports).encode())
        return FinetuneResult(adapter, reports, len(train), len(held), state["train_seconds"], resumed_from)

    def held_out_bpb(self, model, examples: Sequence[tuple[list[int], list[int]]], answers: Sequence[str],
                     bf16: bool) -> float:
        """Gold bits per byte of the answers (their end of turn not counted), teacher-forced."""
        if not examples:
            return math.nan
        import torch

        model.eval()
        nll, n_bytes = 0.0, 0
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            for (prompt, answer), text in zip(examples, answers):
                gold = answer[:-1]
                logits = model(input_ids=torch.tensor([prompt + gold])).logits[0, len(prompt) - 1:-1].float()
                nll -= torch.log_softmax(logits, -1)[torch.arange(len(gold)), torch.tensor(gold)].sum().item()
                n_bytes += len(text.encode("utf-8"))
        model.train()
        return nll / math.log(2) / n_bytes

    def _fingerprint(self, examples) -> str:
        """What a checkpoint must have been trained with to be resumed: the records and the settings, but
        the epochs (a finished run goes on for more), the threads and the checkpoint interval."""
        settings = {k: v for k, v in asdict(self.config).items() if k not in ("epochs", "threads", "checkpoint_every")}
        digest = hashlib.sha256(json.dumps([settings, str(self.local.path)]).encode())
        for prompt, answer in examples:
            digest.update(json.dumps([prompt, answer]).encode())
        return digest.hexdigest()

    def _bar(self, total: int, done: int, desc: str):
        if not self.progress:
            return None
        try:
            from tqdm import tqdm
        except ImportError:
            return None
        return tqdm(total=total, initial=done, desc=desc, unit="record", file=sys.stderr)


def _bf16_native(torch) -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX): elsewhere it is emulated, slower."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return bool(torch.backends.mkldnn.is_available()) and ("avx512_bf16" in flags or "amx_bf16" in flags)
