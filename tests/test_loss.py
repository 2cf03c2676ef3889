"""The training loss (`pubmedqa_gpt2/training/loss.py`): the model's own causal-LM loss on the
labelled tokens, by hand, through the Trainer, and on every token with `loss_on: all`."""

from __future__ import annotations

import shutil

import pytest
import torch

from pubmedqa_gpt2.core import paths
from pubmedqa_gpt2.prompt import Encoded
from pubmedqa_gpt2.training import recipe
from pubmedqa_gpt2.training import trainer as trainer_module
from pubmedqa_gpt2.training.collator import Collator
from pubmedqa_gpt2.training.examples import IGNORE_INDEX, read_split, to_features
from stages import train as stage

from .training_helpers import LABEL_IDS, read_metrics, set_params


@pytest.mark.parametrize("loss_on", ["completion", "all"])
def test_loss_equals_a_hand_computed_cross_entropy(tiny_model_params, loss_on):
    """The model's loss on a collated batch is the mean negative log-likelihood of exactly
    the completion tokens (end-of-text included), computed here by hand from full logits."""
    from pubmedqa_gpt2.model.loading import build_model

    model = build_model(tiny_model_params).eval()
    eos = 50256
    examples = [
        Encoded([11, 12, 13, 14, 15], [3763, 21, eos], False),
        Encoded([31, 32], [645, 41, 42, eos], False),
    ]
    batch = Collator(pad_id=eos)([to_features(ex, loss_on) for ex in examples])
    with torch.no_grad():
        loss = model(**batch).loss
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    terms = []
    for row, ex in enumerate(examples):
        tokens = ex.prompt_ids + ex.completion_ids
        first = len(ex.prompt_ids) if loss_on == "completion" else 1
        for pos in range(first, len(tokens)):  # token `pos` is predicted at position pos - 1
            terms.append(-log_probs[row, pos - 1, tokens[pos]])
    assert len(terms) == (3 + 4 if loss_on == "completion" else 7 + 5)
    assert loss.item() == pytest.approx(torch.stack(terms).mean().item(), rel=1e-5)


@pytest.mark.parametrize("loss_on", ["completion", "all"])
@pytest.mark.parametrize("num_items", [None, 11])
def test_the_trainer_s_loss_and_gradients_are_the_model_s_own(
    tiny_model_params, tmp_path, loss_on, num_items
):
    """The Trainer's loss runs the LM head on the labelled positions only, yet gives the
    figure and the gradients of transformers' own causal-LM loss on full logits: the mean NLL
    of the labelled tokens, or their sum over the Trainer's `num_items_in_batch` (gradient
    accumulation's count). The head sees one row per labelled token, and only during the loss."""
    from transformers import TrainingArguments

    from pubmedqa_gpt2.model.loading import build_model

    model = build_model(tiny_model_params).eval()  # no dropout: both passes see one function
    with torch.no_grad():  # an untied head, so a row mix-up in it shows in the gradients
        model.config.tie_word_embeddings = False
        model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.clone() + 0.1)
    eos = 50256
    examples = [
        Encoded([11, 12, 13, 14, 15], [3763, 21, eos], False),
        Encoded([31, 32], [645, 41, 42, eos], False),
        Encoded([51, 52, 53, 54, 55, 56, 57, 58], [3863, eos], False),
    ]
    batch = Collator(pad_id=eos)([to_features(ex, loss_on) for ex in examples])
    labelled = 3 + 4 + 2 if loss_on == "completion" else 7 + 5 + 9  # position 0 predicts none
    # transformers' own loss: full logits, labels shifted inside the model.
    full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    targets = batch["input_ids"].clone()
    targets[batch["attention_mask"] == 0] = IGNORE_INDEX
    if loss_on == "completion":
        for row, ex in enumerate(examples):
            targets[row, : len(ex.prompt_ids)] = IGNORE_INDEX
    nll = torch.nn.functional.cross_entropy(
        full[:, :-1].reshape(-1, full.shape[-1]).float(), targets[:, 1:].reshape(-1),
        reduction="sum",
    )  # fmt: skip
    expected = nll / (num_items if num_items is not None else labelled)
    expected.backward()
    expected_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()

    rows_seen = []
    model.lm_head.register_forward_hook(lambda _m, _a, out: rows_seen.append(out.shape))
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    trainer = trainer_module.DecisionTrainer(
        model=model, args=args, dev_examples=[], label_ids=LABEL_IDS
    )
    loss = trainer.compute_loss(model, dict(batch), num_items_in_batch=num_items)
    loss.backward()
    assert rows_seen == [torch.Size([labelled, model.config.vocab_size])]
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    for name, parameter in model.named_parameters():
        torch.testing.assert_close(parameter.grad, expected_grads[name], rtol=1e-3, atol=1e-5)
    model(input_ids=batch["input_ids"])  # outside the loss, the head sees every position
    assert rows_seen[-1] == torch.Size([3, batch["input_ids"].shape[1], model.config.vocab_size])


def test_loss_on_all_learns_the_prompt_tokens_too(workdir, tiny, monkeypatch):
    """With train.loss_on: all every real token is a label; with completion only the
    completion's are; and the run's losses differ accordingly."""
    seen: dict[str, list[tuple[int, int, int]]] = {}

    class Recording(Collator):
        def __call__(self, features):
            batch = super().__call__(features)
            labelled = int((batch["labels"] != IGNORE_INDEX).sum())
            real = int(batch["attention_mask"].sum())
            completion = sum(len(f["input_ids"]) - f["labels"].count(IGNORE_INDEX)
                             for f in features)  # fmt: skip
            seen[mode].append((labelled, real, completion))
            return batch

    monkeypatch.setattr(recipe, "Collator", Recording)
    examples = read_split(workdir / paths.TRAIN_FILE, LABEL_IDS)
    completion_tokens = sum(len(ex.completion_ids) for ex in examples)
    losses = {}
    for mode in ("completion", "all"):
        seen[mode] = []
        set_params(workdir, tiny(epochs=1, loss_on=mode))
        stage.main()
        losses[mode] = read_metrics(workdir)["dev_loss"]
        shutil.rmtree(workdir / "models")
        train_batches = seen[mode][:3]  # 12 examples, batch 4; then the dev batches
        assert sum(real for _, real, _ in train_batches) > 2 * completion_tokens
        if mode == "all":
            assert all(labelled == real for labelled, real, _ in seen[mode])
        else:
            assert sum(labelled for labelled, _, _ in train_batches) == completion_tokens
    assert losses["all"] != pytest.approx(losses["completion"], rel=1e-3)


def test_a_compiled_model_has_no_graph_break_from_the_head_hook():
    """The hook is set (as the Trainer's compute_loss sets it) around a forward that dynamo
    traces: one graph, no break (a boolean-mask index inside the hook broke it twice)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from pubmedqa_gpt2.training.loss import head_on_labelled_positions

    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=100, n_positions=64,
                        bos_token_id=99, eos_token_id=99)  # fmt: skip
    model = GPT2LMHeadModel(config)
    ids = torch.randint(0, 100, (2, 10))
    labels = ids.clone()
    labels[0, :6] = labels[1, :3] = -100
    torch._dynamo.reset()
    with head_on_labelled_positions(model.lm_head, labels):
        explained = torch._dynamo.explain(lambda x: model(x).logits)(ids)
        logits = model(ids).logits
    assert explained.graph_break_count == 0 and explained.graph_count == 1
    assert logits.shape == (4 + 7, 100)  # positions 5..8 of row 0, 2..8 of row 1


def test_predicting_positions_is_a_mask_of_the_positions_before_each_label():
    """Labels [[-100, -100, 5, 6], [-100, 7, -100, -100]]: positions 1 and 2 of row 0 predict
    5 and 6, position 0 of row 1 predicts 7; as a boolean mask it picks those of a
    [batch, length] tensor, numbered 0..7 here: 1, 2 and 4."""
    from pubmedqa_gpt2.training.loss import predicting_positions

    labels = torch.tensor([[-100, -100, 5, 6], [-100, 7, -100, -100]])
    read = predicting_positions(labels)
    assert read.dtype == torch.bool
    assert read.tolist() == [[False, True, True, False], [True, False, False, False]]
    assert torch.arange(8).reshape(2, 4)[read].tolist() == [1, 2, 4]


def completion_logits_and_labels():
    """Logits of the head for 3 labelled tokens over a vocabulary of 4, and the labels:
    row 0 predicts 2 then 1 (positions 0, 1), row 1 predicts 3 (position 1)."""
    logits = torch.tensor([[2.0, 0.0, 1.0, 0.0], [0.0, 3.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    labels = torch.tensor([[-100, 2, 1], [-100, -100, 3]])
    return logits, labels


def test_completion_loss_is_on_the_logits_device():
    """Logits on another device than the batch's labels (here "meta", which has shapes but no
    values; on a cluster a GPU while the labels are built on the CPU): the targets are moved
    to the logits' device, and the loss is there too."""
    import types

    from pubmedqa_gpt2.training.loss import completion_loss

    logits, labels = completion_logits_and_labels()
    outputs = types.SimpleNamespace(logits=logits.to("meta"))
    for count in (None, 11):
        loss = completion_loss(outputs, labels, num_items_in_batch=count)
        assert loss.device == torch.device("meta") and loss.shape == ()


def test_completion_loss_over_a_count_keeps_the_logits_device_and_float32():
    """The sum of the NLLs over the Trainer's count: by hand, -log softmax of the labelled
    logits: row [2, 0, 1, 0] at 2: log(e^2 + 1 + e + 1) - 1 = 1.4938; [0, 3, 0, 0] at 1:
    log(e^3 + 3) - 3 = 0.1392; [1, 1, 1, 1] at 3: log 4 = 1.3863; sum 3.0193, over 11:
    0.27448. The figure stays float32 on the logits' device (the CPU) whether the count is
    a float64 tensor or an int, and whatever torch's default device is (here "meta")."""
    import types

    from pubmedqa_gpt2.training.loss import completion_loss

    logits, labels = completion_logits_and_labels()
    outputs = types.SimpleNamespace(logits=logits)
    for count in (11, torch.tensor(11.0, dtype=torch.float64)):
        with torch.device("meta"):
            loss = completion_loss(outputs, labels, num_items_in_batch=count)
        assert loss.device == torch.device("cpu") and loss.dtype == torch.float32
        assert loss.item() == pytest.approx(3.0193 / 11, abs=1e-5)
