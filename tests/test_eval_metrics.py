"""Zero-shot and retrieval metrics against naive references and hand-computed answers.

References are written here with plain loops: rank by (score descending, index
ascending), the tie rule of mmjax.eval.
"""
import hashlib
import math

import numpy as np
import pytest

from mmjax.eval import (
    blocked_top_k,
    build_classifier,
    classify,
    label_rank,
    mean_per_class_recall,
    retrieval_metrics,
    topk_accuracy,
    zero_shot_metrics,
)


def naive_order(scores):
    """Candidate indices sorted by (score descending, index ascending)."""
    return sorted(range(len(scores)), key=lambda j: (-float(scores[j]), j))


def naive_topk_accuracy(logits, labels, k):
    hits = 0
    for row, label in zip(logits, labels):
        hits += label in naive_order(row)[:k]
    return hits / len(labels)


def naive_balanced_accuracy(labels, preds):
    """sklearn's balanced_accuracy_score, re-derived: confusion over the union of
    labels and predictions, recall per row, NaN rows (never a label) dropped."""
    classes = sorted(set(labels) | set(preds))
    recalls = []
    for c in classes:
        support = sum(1 for y in labels if y == c)
        correct = sum(1 for y, p in zip(labels, preds) if y == c and p == c)
        if support:
            recalls.append(correct / support)
    return sum(recalls) / len(recalls)


def normalize64(x):
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def naive_retrieval(image_emb, text_emb, text_to_image, ks):
    images, texts = normalize64(image_emb), normalize64(text_emb)
    metrics = {}
    for k in ks:
        image_hits = 0
        for t in range(len(texts)):
            scores = [float(np.dot(texts[t], images[i])) for i in range(len(images))]
            image_hits += text_to_image[t] in naive_order(scores)[:k]
        text_hits = 0
        for i in range(len(images)):
            scores = [float(np.dot(images[i], texts[t])) for t in range(len(texts))]
            text_hits += any(text_to_image[t] == i for t in naive_order(scores)[:k])
        metrics[f"image_retrieval_recall@{k}"] = image_hits / len(texts)
        metrics[f"text_retrieval_recall@{k}"] = text_hits / len(images)
    return metrics


# ---------------------------------------------------------------- classification

HAND_LOGITS = np.array(
    [
        [0.9, 0.1, 0.0, 0.0, 0.0, 0.0],  # label 0: rank 0
        [0.5, 0.4, 0.3, 0.2, 0.1, 0.0],  # label 4: rank 4
        [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],  # label 0: rank 5
        [0.3, 0.3, 0.3, 0.0, 0.0, 0.0],  # label 1: tie with class 0 -> rank 1
    ],
    np.float32,
)
HAND_LABELS = np.array([0, 4, 0, 1])


def test_topk_hand_computed():
    np.testing.assert_array_equal(label_rank(HAND_LOGITS, HAND_LABELS), [0, 4, 5, 1])
    assert topk_accuracy(HAND_LOGITS, HAND_LABELS, 1) == 0.25
    assert topk_accuracy(HAND_LOGITS, HAND_LABELS, 2) == 0.5
    assert topk_accuracy(HAND_LOGITS, HAND_LABELS, 5) == 0.75
    assert topk_accuracy(HAND_LOGITS, HAND_LABELS, 6) == 1.0
    assert topk_accuracy(HAND_LOGITS, HAND_LABELS, 100) == 1.0  # k > C clamps
    # these wrapped silently (label -1 read the last class) or returned 0.0 (k = 0)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 6\) \(the classes\), got -1\.\.2"):
        label_rank(HAND_LOGITS[:2], [-1, 2])
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 6\) \(the classes\), got 0\.\.6"):
        label_rank(HAND_LOGITS[:2], [0, 6])
    with pytest.raises(ValueError, match="top-k accuracy needs k ≥ 1, got 0"):
        topk_accuracy(HAND_LOGITS, HAND_LABELS, 0)


def test_ties_lower_class_index_wins():
    logits = np.array([[1.0, 1.0, 1.0], [0.0, -0.0, 0.0]], np.float32)
    for label, rank in [(0, 0), (1, 1), (2, 2)]:
        np.testing.assert_array_equal(label_rank(logits[:1], [label]), [rank])
    np.testing.assert_array_equal(label_rank(logits[1:], [1]), [1])  # -0.0 == 0.0
    # argmax (first maximum) agrees with rank 0.
    assert mean_per_class_recall(logits[:1], [0]) == 1.0
    assert mean_per_class_recall(logits[:1], [1]) == 0.0


def test_topk_matches_naive_with_many_ties():
    rng = np.random.default_rng(0)
    logits = rng.integers(0, 4, size=(50, 7)).astype(np.float32)
    labels = rng.integers(0, 7, size=50)
    for k in (1, 2, 5, 7, 9):
        assert topk_accuracy(logits, labels, k) == pytest.approx(
            naive_topk_accuracy(logits, labels, k)
        )
    # Blocked rank computation equals the one-block one.
    np.testing.assert_array_equal(
        label_rank(logits, labels, block_size=3), label_rank(logits, labels, block_size=50)
    )


def test_mean_per_class_recall_excludes_absent_classes():
    labels = np.array([0, 0, 2, 2, 2])
    preds = np.array([0, 1, 2, 2, 1])  # class 1 predicted but never a label; 3.. absent
    assert mean_per_class_recall(preds, labels) == pytest.approx((1 / 2 + 2 / 3) / 2)
    rng = np.random.default_rng(1)
    for _ in range(20):
        labels = rng.choice([0, 3, 4, 8], size=30)
        preds = rng.integers(0, 10, size=30)
        assert mean_per_class_recall(preds, labels) == pytest.approx(
            naive_balanced_accuracy(labels.tolist(), preds.tolist())
        )


def test_zero_shot_metrics():
    metrics = zero_shot_metrics(HAND_LOGITS, HAND_LABELS)
    assert metrics["acc1"] == 0.25 and metrics["acc5"] == 0.75
    # preds = [0, 0, 5, 0]; class 0 recall 1/2, class 4 recall 0, class 1 recall 0.
    assert metrics["mean_per_class_recall"] == pytest.approx(1 / 6)
    small = zero_shot_metrics(HAND_LOGITS[:, :4], np.array([0, 2, 0, 1]))
    assert math.isnan(small["acc5"])  # clip_benchmark: acc5 only with >= 5 classes


# ---------------------------------------------------------------- classifier


def fake_encode(texts):
    """Deterministic text -> [len, 8] embedding from a hash."""
    rows = [np.frombuffer(hashlib.sha256(t.encode()).digest()[:8], np.uint8) for t in texts]
    return np.stack(rows).astype(np.float32) - 127.5


def test_build_classifier_matches_hand_computation():
    classnames = ["cat", "dog", "red square"]
    templates = ["a photo of a {}.", "a {c} drawing", "{c}"]
    calls = []

    def encode(texts):
        calls.append(list(texts))
        return fake_encode(texts)

    classifier = build_classifier(encode, classnames, templates, batch_size=4)
    assert classifier.shape == (3, 8)
    assert all(len(call) <= 4 for call in calls)
    assert [t for call in calls for t in call][3:6] == ["a photo of a dog.", "a dog drawing", "dog"]
    for name, row in zip(classnames, classifier):
        prompts = [t.replace("{}", name).replace("{c}", name) for t in templates]
        mean = normalize64(fake_encode(prompts)).mean(axis=0)
        np.testing.assert_allclose(row, mean / np.linalg.norm(mean), rtol=1e-5, atol=1e-6)

    per_class = {"cat": ["a cat", "cats"], "dog": ["a dog"]}
    classifier = build_classifier(fake_encode, ["dog", "cat"], per_class)
    np.testing.assert_allclose(classifier[0], normalize64(fake_encode(["a dog"]))[0], rtol=1e-5)


def test_classify():
    rng = np.random.default_rng(2)
    images = rng.normal(size=(5, 8))
    classifier = normalize64(rng.normal(size=(3, 8)))
    logits = classify(images, classifier, logit_scale=100.0)
    for n in range(5):
        for c in range(3):
            expected = 100.0 * np.dot(images[n], classifier[c]) / np.linalg.norm(images[n])
            assert logits[n, c] == pytest.approx(expected, rel=1e-5)


# ---------------------------------------------------------------- retrieval


def test_retrieval_hand_computed():
    images = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [-1, 0, 0]], np.float32)  # 3: no caption
    texts = np.array([[1, 0, 0], [0, 1, 2], [0, 1, 0], [1, 0, 1], [3, 0, 1]], np.float32)
    text_to_image = np.array([0, 0, 1, 2, 2])
    # Rank of the own image per text: 0, 2, 0, 1 (tie with image 0, lower index first), 1.
    # Images: 0 and 1 find a caption at 1; 2 is beaten by text 1 (an image-0 caption); 3 never.
    expected = {
        "image_retrieval_recall@1": 2 / 5,
        "text_retrieval_recall@1": 2 / 4,
        "image_retrieval_recall@2": 4 / 5,
        "text_retrieval_recall@2": 3 / 4,
        "image_retrieval_recall@10": 1.0,  # k > candidates
        "text_retrieval_recall@10": 3 / 4,
    }
    for block_size in (1, 2, 3, 16):
        metrics = retrieval_metrics(
            images, texts, text_to_image, ks=(1, 2, 10), block_size=block_size
        )
        assert list(metrics) == list(expected)
        assert metrics == pytest.approx(expected)
    assert naive_retrieval(images, texts, text_to_image, (1, 2, 10)) == pytest.approx(expected)
    with pytest.raises(ValueError, match=r"recall@k needs every k ≥ 1, got \(1, -1\)"):  # was a raw JAX error
        retrieval_metrics(images, texts, text_to_image, ks=(1, -1))


def random_pairs(rng, num_images, dim, lattice):
    """Images, captions (0-3 per image) and duplicated rows; lattice: +-1 entries, exact ties."""
    draw = (lambda n: rng.choice([-1.0, 1.0], size=(n, dim))) if lattice else (
        lambda n: rng.normal(size=(n, dim))
    )
    images = draw(num_images)
    images[5] = images[2]
    text_to_image = np.repeat(np.arange(num_images), rng.integers(0, 4, size=num_images))
    texts = draw(len(text_to_image))
    texts[3] = texts[1]
    texts[-1] = images[2]
    return images.astype(np.float32), texts.astype(np.float32), text_to_image


@pytest.mark.parametrize("lattice,dim", [(False, 8), (True, 4), (True, 16)])
def test_blocked_retrieval_equals_naive(lattice, dim):
    rng = np.random.default_rng(dim)
    images, texts, text_to_image = random_pairs(rng, 23, dim, lattice)
    ks = (1, 5, 10, 100)
    expected = naive_retrieval(images, texts, text_to_image, ks)
    for block_size in (1, 4, 7, 23, 64):
        metrics = retrieval_metrics(images, texts, text_to_image, ks=ks, block_size=block_size)
        assert metrics == pytest.approx(expected), block_size


@pytest.mark.parametrize("lattice", [False, True])
def test_blocked_top_k_order_equals_naive(lattice):
    rng = np.random.default_rng(3)
    images, texts, _ = random_pairs(rng, 19, 4 if lattice else 8, lattice)
    queries, candidates = normalize64(texts), normalize64(images)
    expected = np.array([naive_order(candidates @ q)[:6] for q in queries])
    for block_size in (1, 5, 19, 32):
        top = blocked_top_k(queries, candidates, 6, block_size=block_size)
        np.testing.assert_array_equal(top, expected)
    assert blocked_top_k(queries, candidates, 50, block_size=4).shape == (len(queries), 19)


def test_top_k_of_no_queries_is_empty():
    candidates = np.eye(3, dtype=np.float32)
    assert blocked_top_k(np.zeros((0, 3), np.float32), candidates, 2).shape == (0, 2)


def test_signed_zero_scores_tie():
    # Scores -0.0 (candidate 0) and +0.0 (candidate 1) are equal: lower index first.
    candidates = np.array([[-1.0, -0.0], [1.0, 0.0]], np.float32)
    query = np.array([[0.0, 1.0]], np.float32)
    for block_size in (1, 2):
        np.testing.assert_array_equal(blocked_top_k(query, candidates, 2, block_size), [[0, 1]])


def test_non_finite_logits_and_embeddings_are_refused():
    """Every comparison with NaN is false: a NaN true-class logit ranked first, so a model with NaN weights scored
    acc1 100 %."""
    logits = np.full((4, 3), np.nan, np.float32)
    with pytest.raises(ValueError, match=r"^the logits hold NaN or inf \(4 of 4 rows\): the model computes "
                                         r"non-finite values"):
        zero_shot_metrics(logits, np.array([0, 1, 2, 0]))
    images = np.eye(3, dtype=np.float32)
    texts = images.copy()
    texts[1, 0] = np.inf
    with pytest.raises(ValueError, match=r"^the text embeddings hold NaN or inf \(1 of 3 rows\)"):
        retrieval_metrics(images, texts, np.arange(3))
    assert label_rank(np.zeros((0, 3), np.float32), np.zeros(0, np.int64)).shape == (0,)  # no rows: nothing to refuse
