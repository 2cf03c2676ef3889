"""PubMedQA's `preprocess/split_dataset.py`, restated as the benchmark's authors wrote it.

Independent of `pubmedqa_gpt2/data/split.py` on purpose: the tests compare the stage's split
with what this script gives, so it keeps the original's shape (a dataset dict in file order, one
module-level random state seeded once with 0, labels in the order yes, no, maybe, the last
part topped up from the others) rather than sharing any code with the project.
"""

from __future__ import annotations

import math
import random


def split_label(pmids, fold):
    random.shuffle(pmids)
    num_all = len(pmids)
    num_split = math.ceil(num_all / fold)
    output = []
    for i in range(fold):
        if i == fold - 1:
            output.append(pmids[i * num_split :])
        else:
            output.append(pmids[i * num_split : (i + 1) * num_split])
    return output


def split(dataset, fold):
    label2pmid = {"yes": [], "no": [], "maybe": []}
    for pmid, info in dataset.items():
        label2pmid[info["final_decision"]].append(pmid)
    label2pmid = {k: split_label(v, fold) for k, v in label2pmid.items()}
    output = []
    for i in range(fold):
        pmids = label2pmid["yes"][i] + label2pmid["no"][i] + label2pmid["maybe"][i]
        output.append({pmid: dataset[pmid] for pmid in pmids})
    if len(output[-1]) != len(output[0]):
        for i in range(fold - 1):
            picked = random.choice(list(output[i]))
            output[-1][picked] = output[i][picked]
            output[i].pop(picked)
    return output


def official_folds(dataset):
    """(test PMIDs, [dev PMIDs of fold 0..9]) exactly as the script writes them."""
    state = random.getstate()
    try:
        random.seed(0)
        cv_set, testset = split(dataset, 2)
        cv_sets = split(cv_set, 10)
    finally:
        random.setstate(state)
    return list(testset), [list(part) for part in cv_sets]
