"""Weighted k-nearest-neighbour classification on L2-normalised features (InstDisc / DINO).

Each test sample's k most cosine-similar train samples vote for their class with weight
exp(sim / T); the class with the largest total vote wins. Defaults k = 200, T = 0.07 as in DINO's
`eval_knn.py`. Test samples are processed in chunks so the chunk x N_train similarity matrix stays
within `max_elements` (memory bounded whatever the train set size).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from fastdisco.evaluation.linear import topk_correct


@torch.no_grad()
def knn_predict(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor, *,
                num_classes: int, k: int = 200, temperature: float = 0.07,
                max_elements: int = 1 << 27) -> torch.Tensor:
    """Class scores [N_test, C] (summed exp(sim/T) votes of the k nearest train samples)."""
    train = F.normalize(train_feats.float(), dim=1)
    test = F.normalize(test_feats.float().to(train.device), dim=1)
    labels = train_labels.long().to(train.device)
    k = min(k, train.shape[0])
    chunk = max(1, max_elements // max(1, train.shape[0]))
    out = []
    for i in range(0, test.shape[0], chunk):
        sim = test[i:i + chunk] @ train.T                        # [c, N_train]
        top_sim, top_idx = sim.topk(k, dim=1)                     # [c, k]
        weights = (top_sim / temperature).exp()
        scores = torch.zeros(sim.shape[0], num_classes, device=train.device)
        scores.scatter_add_(1, labels[top_idx], weights)          # votes per class
        out.append(scores)
    return torch.cat(out)


@torch.no_grad()
def knn_eval(train_feats: torch.Tensor, train_labels: torch.Tensor, val_feats: torch.Tensor,
             val_labels: torch.Tensor, *, k: int = 200, temperature: float = 0.07,
             num_classes: int | None = None, max_elements: int = 1 << 27) -> dict:
    """Weighted kNN accuracy: {"top1", "top5", "settings"} (percent)."""
    if train_labels.numel() == 0 or val_labels.numel() == 0:
        raise ValueError("kNN needs non-empty train and val sets")
    if num_classes is None:
        num_classes = int(torch.maximum(train_labels.max(), val_labels.max().to(train_labels.device))) + 1
    val_labels = val_labels.long().to(train_feats.device)
    correct = torch.zeros(2, dtype=torch.long, device=train_feats.device)
    # Chunk over val here too, so the [chunk, C] score matrix is bounded as well.
    step = max(1, max_elements // max(1, train_feats.shape[0], num_classes))
    for i in range(0, val_feats.shape[0], step):
        scores = knn_predict(train_feats, train_labels, val_feats[i:i + step], num_classes=num_classes, k=k,
                             temperature=temperature, max_elements=max_elements)
        correct += topk_correct(scores, val_labels[i:i + step])
    pct = (correct.double() * (100.0 / val_labels.numel())).tolist()
    return {"top1": pct[0], "top5": pct[1],
            "settings": {"k": min(k, int(train_feats.shape[0])), "temperature": temperature,
                         "num_classes": num_classes, "num_train": int(train_feats.shape[0]),
                         "num_val": int(val_feats.shape[0]), "feature_dim": int(train_feats.shape[1])}}
