"""COSINE's pieces against the official code's formulas (github.com/yueyu1030/COSINE, trainer.py and
utils.py, re-typed here from the paper's code) and against values worked out by hand."""

import math

import pytest
import torch
from torch import nn

from tunesmith.objectives.cosine import (
    capture_input,
    confidence,
    confidence_sum,
    contrastive_sum,
    feature_module,
    pair_count,
    pseudo_label_accuracy,
    pseudo_labels,
    self_training_sum,
    sharpen,
)


def official_soft_frequency(y, power):  # trainer.py soft_frequency(probs=True)
    f = torch.sum(y, dim=0)
    t = y**power / f
    t = t + 1e-10
    return t / torch.sum(t, dim=-1, keepdim=True)


def official_weight(target):  # trainer.py calc_loss, conf == 'entropy', verbatim
    weight = torch.sum(-torch.log(target + 1e-6) * target, dim=1)
    # weight.size(-1) is the batch size here: the official code divides by log(batch size), not log C
    return 1 - weight / math.log(weight.size(-1))


def official_contrastive_pair(x0, x1, y, margin, metric):  # utils.py ContrastiveLoss.forward
    if metric == "l2":
        dist_sq = torch.sum((x0 - x1) ** 2, 1) / x0.shape[-1]
        dist = torch.sqrt(dist_sq)
    else:
        dist = 1 - torch.sum(x0 * x1, -1) / torch.sqrt(torch.sum(x0**2, 1) * torch.sum(x1**2, 1))
        dist_sq = dist**2
    mdist = torch.clamp(margin - dist, min=0.0)
    return torch.sum(y * dist_sq + (1 - y) * mdist**2) / 2.0


def test_sharpen_is_the_official_soft_frequency_over_the_given_texts():
    probs = torch.softmax(torch.randn(50, 4, generator=torch.Generator().manual_seed(0)), -1)
    torch.testing.assert_close(sharpen(probs, 2.0), official_soft_frequency(probs, 2.0))
    assert torch.allclose(sharpen(probs).sum(-1), torch.ones(50))


def test_sharpen_sharpens_and_demotes_a_frequent_class():
    balanced = torch.tensor([[0.7, 0.3], [0.3, 0.7]])
    assert sharpen(balanced)[0, 0] > 0.7  # 0.49 / 0.58 = 0.845
    assert sharpen(balanced)[0, 0] == pytest.approx(0.49 / (0.49 + 0.09))
    # class 0 predicted everywhere: dividing by its frequency pulls an unsure text towards class 1
    skewed = torch.tensor([[0.9, 0.1]] * 9 + [[0.55, 0.45]])
    assert sharpen(skewed)[-1, 1] > 0.45


def test_confidence_is_one_minus_normalised_entropy():
    probs = torch.tensor([[1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3], [0.8, 0.1, 0.1]])
    c = confidence(probs)
    assert c[0] == pytest.approx(1.0, abs=1e-4) and c[1] == pytest.approx(0.0, abs=1e-4)
    entropy = -(0.8 * math.log(0.8) + 2 * 0.1 * math.log(0.1))
    assert c[2] == pytest.approx(1 - entropy / math.log(3), abs=1e-4)
    # with as many texts as classes, the official code's log(batch size) is the paper's log C
    torch.testing.assert_close(c, official_weight(probs))
    batch = torch.softmax(torch.randn(32, 4, generator=torch.Generator().manual_seed(0)), -1)
    assert (official_weight(batch) > confidence(batch)).all()  # there it selects more texts than the paper's


def test_selection_keeps_confident_texts_with_their_confidence():
    probs = torch.tensor([[0.99, 0.01], [0.6, 0.4], [0.02, 0.98]])
    targets, weights = pseudo_labels(probs, power=2.0, eps=0.6)
    c = confidence(targets)  # the paper's Eq. 6: the sharpened pseudo-label's confidence
    assert weights[1] == 0 and c[1] < 0.6  # unsure: not selected
    assert weights[0] == c[0] and weights[2] == c[2]
    assert targets.argmax(-1).tolist() == [0, 0, 1]  # the prediction's own label, sharpened
    # the official code's order: the prediction's confidence, lower than the sharpened label's
    _, official = pseudo_labels(probs, power=2.0, eps=0.6, confidence_from="prediction")
    assert official[0] == confidence(probs)[0] and official[0] < weights[0]
    # a prediction at p = 0.9 (where the confidence regulariser holds a binary model): selected by the
    # pseudo-label's confidence, not by the prediction's
    held = torch.tensor([[0.9, 0.1], [0.1, 0.9]])
    assert (pseudo_labels(held, 2.0, 0.6)[1] > 0).all()
    assert (pseudo_labels(held, 2.0, 0.6, confidence_from="prediction")[1] == 0).all()
    with pytest.raises(ValueError, match="confidence_from"):
        pseudo_labels(probs, 2.0, 0.6, confidence_from="teacher")


def test_self_training_sum_is_the_official_weighted_kl():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(6, 3, generator=g)
    teacher = torch.softmax(torch.randn(6, 3, generator=g) * 3, -1)
    targets, weights = pseudo_labels(teacher, 2.0, 0.3, confidence_from="prediction")
    log_probs = torch.log_softmax(logits, -1)
    # official calc_loss: KLDivLoss(reduction='none')(log p, target) * mask * weight, summed (targets are
    # sharpened over the batch, here the batch is all the texts)
    mask = (confidence(teacher) > 0.3).float()
    official = torch.sum(nn.KLDivLoss(reduction="none")(log_probs, targets) * mask[:, None] *
                         confidence(teacher)[:, None])
    torch.testing.assert_close(self_training_sum(log_probs, targets, weights), official)


def test_confidence_regulariser_has_the_official_gradient_and_is_non_negative():
    logits = torch.randn(5, 4, generator=torch.Generator().manual_seed(2), requires_grad=True)
    selected = torch.tensor([True, False, True, True, False])
    ours = confidence_sum(torch.log_softmax(logits, -1), selected)
    (grad_ours,) = torch.autograd.grad(ours, logits)
    # official: l -= confreg * (sum(log p * w) + log(C) * C), confreg 1
    official = -(torch.sum(torch.log_softmax(logits, -1) * selected.float()[:, None]) + math.log(4) * 4)
    (grad_official,) = torch.autograd.grad(official, logits)
    torch.testing.assert_close(grad_ours, grad_official)
    # C * KL(uniform || p) per selected text
    p = torch.softmax(logits.detach(), -1)
    kl = (0.25 * (torch.log(torch.tensor(0.25)) - torch.log(p))).sum(-1)
    torch.testing.assert_close(ours.detach(), 4 * kl[selected].sum())
    assert ours.item() >= 0
    uniform = confidence_sum(torch.log(torch.full((2, 4), 0.25)), torch.tensor([True, True]))
    assert uniform.item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("metric", ["cos", "l2"])
def test_contrastive_sum_over_all_selected_pairs(metric):
    g = torch.Generator().manual_seed(3)
    feats = torch.randn(5, 8, generator=g, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1, 0])
    selected = torch.tensor([True, True, True, False, True])
    ours = contrastive_sum(feats, labels, selected, margin=1.0, distmetric=metric)
    kept = [0, 1, 2, 4]
    expected = sum(official_contrastive_pair(feats[[i]], feats[[j]], (labels[i] == labels[j]).float()[None], 1.0,
                                             metric) for a, i in enumerate(kept) for j in kept[a + 1:])
    torch.testing.assert_close(ours, expected)
    assert pair_count(selected) == 6
    (grad,) = torch.autograd.grad(ours, feats)
    assert grad[3].abs().sum() == 0 and grad[0].abs().sum() > 0  # unselected texts get no gradient


def test_contrastive_pulls_agreeing_pairs_together_and_pushes_others_apart():
    same = contrastive_sum(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0]), torch.tensor([True, True]))
    assert same.item() == pytest.approx(0.5)  # d = 1 - cos = 1, d^2 / 2
    other = contrastive_sum(torch.tensor([[1.0, 0.0], [1.0, 0.0]]), torch.tensor([0, 1]), torch.tensor([True, True]))
    assert other.item() == pytest.approx(0.5)  # d = 0: (margin - 0)^2 / 2
    apart = contrastive_sum(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]), torch.tensor([0, 1]), torch.tensor([True, True]))
    assert apart.item() == 0.0  # d = 2 > margin
    one = torch.randn(3, 2, requires_grad=True)
    lone = contrastive_sum(one, torch.tensor([0, 1, 0]), torch.tensor([True, False, False]))
    assert lone.item() == 0.0 and lone.requires_grad


def test_feature_module_and_captured_features(tiny_bert_nodrop):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert_nodrop, num_labels=3).eval()
    head = feature_module(model, 3)
    assert head is model.classifier
    ids = torch.tensor([[2, 5, 6, 3]])
    with capture_input(head) as held:
        logits = model(input_ids=ids).logits
    pooled = model.bert(input_ids=ids).pooler_output
    torch.testing.assert_close(held[0], pooled)
    torch.testing.assert_close(model.classifier(held[0]), logits)
    assert not head._forward_pre_hooks  # removed afterwards


@pytest.mark.parametrize("metric", ["cos", "l2"])
def test_random_pairs_are_the_official_and_wrench_sampling(metric):
    g = torch.Generator().manual_seed(4)
    feats = torch.randn(6, 8, generator=g, requires_grad=True)
    labels = torch.tensor([0, 1, 1, 0, 1, 0])
    selected = torch.tensor([True, True, False, True, True, True])
    ours = contrastive_sum(feats, labels, selected, 1.0, metric, pairs="random",
                           generator=torch.Generator().manual_seed(7))
    # by hand: the same permutation of the 5 selected texts, each text with the one it drew
    perm = torch.randperm(5, generator=torch.Generator().manual_seed(7))
    x, y = feats[selected], labels[selected]
    expected = official_contrastive_pair(x, x[perm], (y == y[perm]).float(), 1.0, metric)
    torch.testing.assert_close(ours, expected)
    assert pair_count(selected, "random") == 5  # the official loss divides by the texts, not the pairs
    if metric == "l2":  # WRENCH: 0.5 * (agree * mean(diff^2) + (1 - agree) * relu(margin - sqrt(.))^2), its mean
        d2 = (x - x[perm]).pow(2).mean(1)
        agree = (y == y[perm]).float()
        wrench = (0.5 * (agree * d2 + (1 - agree) * torch.relu(1.0 - (d2 + 1e-9).sqrt()).pow(2))).mean()
        torch.testing.assert_close(ours / pair_count(selected, "random"), wrench)
    with pytest.raises(ValueError, match="pairs"):
        contrastive_sum(feats, labels, selected, pairs="some")


def test_pseudo_label_accuracy_per_group_by_hand():
    predicted = torch.tensor([0, 1, 1, 0, 1, 0, 1])
    gold = torch.tensor([0, 1, 0, 0, 0, -1, 1])  # text 5 has no gold label: left out
    covered = torch.tensor([True, True, True, False, False, False, False])
    selected = torch.tensor([True, True, False, True, False, True, True])
    out = pseudo_label_accuracy(predicted, gold, covered, selected)
    assert out == {"pseudo_accuracy": 4 / 6,
                   "pseudo_accuracy_covered_selected": 1.0,  # texts 0, 1
                   "pseudo_accuracy_covered_unselected": 0.0,  # text 2
                   "pseudo_accuracy_uncovered_selected": 1.0,  # texts 3, 6 (5 has no gold)
                   "pseudo_accuracy_uncovered_unselected": 0.0}  # text 4
    assert pseudo_label_accuracy(predicted, torch.full((7,), -1), covered, selected) == {}


def test_class_frequency_per_batch_sharpens_over_the_batch():
    from tunesmith.objectives.weak import Weak, WeakConfig, WeakItem

    objective = Weak()
    objective.cfg = WeakConfig(class_frequency="batch", eps=0.0)
    objective.stage = objective.cfg.self_training_stage
    objective.probs = torch.tensor([[0.9, 0.1]] + [[0.2, 0.8]] * 3 + [[0.6, 0.4]])
    objective.targets, objective.weights = pseudo_labels(objective.probs, 2.0, 0.0)  # over all texts
    items = [WeakItem([2, 5], -1, i) for i in (0, 4)]
    batch = objective.collate(items, 0, train=True)
    # by hand over texts 0 and 4 only: f = (1.5, 0.5)
    t = torch.tensor([[0.81 / 1.5, 0.01 / 0.5], [0.36 / 1.5, 0.16 / 0.5]]) + 1e-10
    torch.testing.assert_close(batch["targets"], t / t.sum(-1, keepdim=True))
    # over all five texts (f = (2.1, 2.9)) text 4 leans to class 0; over this batch, to class 1
    assert objective.targets[4].argmax() == 0 and batch["targets"][1].argmax() == 1
    objective.cfg = WeakConfig(eps=0.0)
    objective.probs = None
    torch.testing.assert_close(objective.collate(items, 0, train=True)["targets"], objective.targets[[0, 4]])


@pytest.mark.parametrize("features", ["student", "teacher"])
def test_contrastive_features_student_trains_teacher_does_not(tiny_bert_nodrop, features):
    from transformers import AutoModelForSequenceClassification

    from tunesmith.objectives.weak import Weak, WeakConfig

    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert_nodrop, num_labels=2).eval()
    objective = Weak()
    objective.cfg = WeakConfig(contrastive_features=features, confreg=0.0)
    objective.stage = objective.cfg.self_training_stage
    objective._head = feature_module(model, 2)
    ids = torch.tensor([[2, 5, 6, 3], [2, 7, 8, 3], [2, 9, 5, 3]])
    teacher = torch.randn(3, model.config.hidden_size, generator=torch.Generator().manual_seed(5))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
             "targets": torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3]]), "weights": torch.tensor([0.8, 0.7, 0.9])}
    if features == "teacher":
        batch["teacher_features"] = teacher  # what collate adds from the last relabeling
    term = objective.loss(model, batch).terms["contrastive"]
    with capture_input(objective._head) as held:
        model(input_ids=ids)
    compared = teacher if features == "teacher" else held[0]
    expected = contrastive_sum(compared, torch.tensor([0, 1, 0]), torch.ones(3, dtype=torch.bool))
    torch.testing.assert_close(term.detach(), expected.detach())
    assert term.requires_grad == (features == "student")  # the official term: no gradient at all
    assert objective.loss_sums[2].item() == pytest.approx(expected.item())  # the per-term sums add up
