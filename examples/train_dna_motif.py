"""Many-to-one: train an LSTM in PyTorch to tell whether a DNA sequence contains the TATA box
("TATAAA"), convert it to fastrnn and ship it as fastrnn/models/dna_motif.frnn.

The input is the course's one-hot encoding of "ATCG" (no embedding); sequences of 20-60 bases
are padded and packed, and the class is read from the last valid step. Data:
fastrnn.demo.dna_dataset (synthetic, seeded; no download). Runs in well under a minute on 2 cores.

    python examples/train_dna_motif.py [--out fastrnn/models/dna_motif.frnn]
"""
import argparse
import os
import sys
import time

import torch
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import fastrnn  # noqa: E402
from converters.torch_composite import from_torch_composite  # noqa: E402
from fastrnn.demo import DNA_MOTIF, dna_dataset, score_dna  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


class MotifNet(nn.Module):
    def __init__(self, hidden=32):
        super().__init__()
        self.lstm = nn.LSTM(4, hidden, batch_first=True)
        self.fc = nn.Linear(hidden, 2)

    def forward(self, x, lengths):                       # x: (N, T, 4) one-hot
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True,
                                                   enforce_sorted=False)
        _, (h, _) = self.lstm(packed)
        return self.fc(h[-1])                            # logits; softmax in fastrnn's head


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default=os.path.join(HERE, "..", "fastrnn", "models",
                                                  "dna_motif.frnn"))
    ap.add_argument("--epochs", type=int, default=15)
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)  # small model: one thread is fastest
    vocab = fastrnn.Vocabulary("ATCG")
    train_x, train_y = dna_dataset(3000, seed=1)
    ids, lengths = vocab.encode_batch(train_x)
    x = torch.tensor(vocab.one_hot(ids))
    y, lens = torch.tensor(train_y), torch.tensor(lengths)
    model = MotifNet()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    t0 = time.time()
    for epoch in range(args.epochs):
        perm = torch.randperm(len(y))
        for i in range(0, len(y), 64):
            b = perm[i:i + 64]
            loss = nn.functional.cross_entropy(model(x[b], lens[b]), y[b])
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        print(f"epoch {epoch}: loss {loss.item():.4f} ({time.time() - t0:.1f} s)")
    model.eval()

    test_x, test_y = dna_dataset(1000, seed=2)
    tids, tlen = vocab.encode_batch(test_x)
    with torch.no_grad():
        torch_acc = float((model(torch.tensor(vocab.one_hot(tids)), torch.tensor(tlen))
                           .argmax(1).numpy() == test_y).mean())
    clf = from_torch_composite(model, rnn="lstm", head="fc", head_activation="softmax",
                               vocab=vocab, pool="last", labels=["no motif", "motif"])
    acc = score_dna(clf)
    clf.info = {"task": f"does the DNA sequence contain the TATA box {DNA_MOTIF}?",
                "architecture": "one-hot(ATCG) -> LSTM(4, 32) -> Linear(32, 2) softmax",
                "metric": "test accuracy (1000 sequences, dna_dataset seed 2)",
                "accuracy": acc, "torch_accuracy": torch_acc,
                "trained_by": "examples/train_dna_motif.py", "train_seconds": time.time() - t0}
    fastrnn.save(clf, args.out)
    print(f"accuracy: torch {torch_acc:.4f}, fastrnn {acc:.4f}; wrote {args.out} "
          f"({os.path.getsize(args.out)} bytes)")


if __name__ == "__main__":
    main()
