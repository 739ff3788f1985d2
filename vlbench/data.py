"""From task examples to model batches: tokenised text, the visual input (vlbench.visual), targets.

What a training item is and which target a visit of it trains on is the task's business
(`Task.train_items`, `Task.sample_target`); this module only turns them into tensors.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch

from vlbench.tasks.base import Example, Task
from vlbench.visual import VisualSource, as_visual_source


@dataclass
class TaskData:
    task: Task
    tokenizer: object  # transformers.PreTrainedTokenizerFast
    # what the model reads as visual input (vlbench.visual): a VisualSource, or a feature table (image
    # ids -> (n, T, F)) or video FrameFeatures, which it wraps
    visual: VisualSource
    examples: dict[str, list[Example]]  # split -> examples
    train_items: list[Example] = field(init=False)
    choice_ids: list[int] = field(init=False)  # first target token of each fixed answer ("choice" decoding)
    _input_ids: dict[str, list[int]] = field(init=False, default_factory=dict)
    _target_ids: dict[str, list[int]] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.visual = as_visual_source(self.visual)
        self.train_items = self.task.train_items(self.examples["train"])
        # tokenise every input once per run, not once per batch
        all_examples = self.train_items + self.examples["val"] + self.examples["test"]
        texts = [self.task.input_text(ex) for ex in all_examples]
        limit = self.task.max_input_tokens
        encoded = self.tokenizer(texts, truncation=limit is not None, max_length=limit)["input_ids"]  # with <s> </s>
        self._input_ids = {ex.uid: ids for ex, ids in zip(all_examples, encoded)}
        # tokenised as training tokenises targets ("true" -> "▁true"), checked before any training
        self.choice_ids = [self.tokenizer(c, add_special_tokens=False)["input_ids"][0] for c in self.task.choices]
        if len(set(self.choice_ids)) != len(self.choice_ids) or self.tokenizer.unk_token_id in self.choice_ids:
            raise ValueError(f"{self.task.name}: choices {self.task.choices} do not map to distinct known tokens")

    def split(self, name: str) -> list[Example]:
        return self.examples[name]

    def inputs(self, examples: list[Example], device) -> dict[str, torch.Tensor]:
        ids = [self._input_ids[ex.uid] for ex in examples]
        input_ids, attention_mask = pad([torch.tensor(x) for x in ids], self.tokenizer.pad_token_id)
        batch = {"input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device)}
        batch.update({k: v.to(device) for k, v in self.visual.batch(examples).items()})
        return batch

    def target_ids(self, targets: list[str]) -> list[list[int]]:
        """Each target's token ids with <s> </s>, each string tokenised once per run: every epoch visits
        the same targets again, and tokenising each batch's afresh took ~5% of a tiny training step."""
        new = [t for t in dict.fromkeys(targets) if t not in self._target_ids]
        if new:
            self._target_ids.update(zip(new, self.tokenizer(new, add_special_tokens=True)["input_ids"]))
        return [self._target_ids[t] for t in targets]

    def predict(self, model, batch: dict[str, torch.Tensor], optim) -> list[str]:
        """Decode one batch as the task says: greedy, beam search, or a choice between fixed answers."""
        if self.task.decode == "choice":
            best = model.choice_logits(batch, self.choice_ids).argmax(-1)
            return [self.task.choices[i] for i in best.tolist()]
        if self.task.decode == "beam":
            out = model.generate(batch, num_beams=optim.caption_beams, max_new_tokens=optim.caption_max_len + 2)
        else:
            out = model.generate(batch, num_beams=1, max_new_tokens=self.task.max_target_tokens + 2)
        return [s.strip() for s in self.tokenizer.batch_decode(out, skip_special_tokens=True)]


def pad(seqs: list[torch.Tensor], value: int) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = [len(s) for s in seqs]
    out = torch.full((len(seqs), max(lengths)), value, dtype=torch.long)
    mask = torch.zeros_like(out)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = s
        mask[i, : len(s)] = 1
    return out, mask


def collate_train(data: TaskData, indices: list[int], rng: random.Random, device) -> dict[str, torch.Tensor]:
    items = [data.train_items[i] for i in indices]
    batch = data.inputs(items, device)
    targets, weights = zip(*(data.task.sample_target(item, rng) for item in items))
    labels, mask = pad([torch.tensor(x) for x in data.target_ids(list(targets))], -100)
    batch["labels"] = labels.masked_fill(mask == 0, -100).to(device)
    batch["weights"] = torch.tensor(weights, dtype=torch.float32, device=device)
    return batch
