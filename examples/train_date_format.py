"""Encoder-decoder: train a GRU seq2seq in PyTorch to rewrite human-written dates as ISO dates
("5 March 2021", "March 5, 2021", "05.03.2021", "Mar 5 2021", ... -> "2021-03-05"), convert it to
fastrnn and ship it as fastrnn/models/date_format.frnn.

A bidirectional GRU encoder reads the characters; its two final states, concatenated, seed a GRU
decoder that writes the ISO date after a bos symbol until eos (teacher forcing in training).
Data: fastrnn.demo.date_dataset (synthetic, seeded). Runs in about a minute on 2 cores.

    python examples/train_date_format.py [--out fastrnn/models/date_format.frnn]
"""
import argparse
import os
import sys
import time

import numpy as np
import torch
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import fastrnn  # noqa: E402
from converters.torch_composite import seq2seq_from_torch  # noqa: E402
from fastrnn.demo import date_dataset, score_dates  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
HIDDEN = 64


class DateNet(nn.Module):
    def __init__(self, src_size, tgt_size):
        super().__init__()
        self.src_emb = nn.Embedding(src_size, 16)
        self.encoder = nn.GRU(16, HIDDEN, batch_first=True, bidirectional=True)
        self.tgt_emb = nn.Embedding(tgt_size, 16)
        self.decoder = nn.GRU(16, 2 * HIDDEN, batch_first=True)
        self.out = nn.Linear(2 * HIDDEN, tgt_size)

    def encode(self, src, lengths):
        packed = nn.utils.rnn.pack_padded_sequence(self.src_emb(src), lengths, batch_first=True,
                                                   enforce_sorted=False)
        _, h = self.encoder(packed)                      # (2, N, H): forward, reverse
        return torch.cat([h[0], h[1]], dim=-1)[None]     # (1, N, 2H): bridge="concat"

    def forward(self, src, lengths, tgt_in):
        out, _ = self.decoder(self.tgt_emb(tgt_in), self.encode(src, lengths))
        return self.out(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default=os.path.join(HERE, "..", "fastrnn", "models",
                                                  "date_format.frnn"))
    ap.add_argument("--steps", type=int, default=600)
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)  # small model: one thread is fastest
    src_text, tgt_text = date_dataset(8000, seed=1)
    src_vocab = fastrnn.Vocabulary(sorted(set("".join(src_text))), pad="_")
    tgt_vocab = fastrnn.Vocabulary("0123456789-", bos="^", eos="$")
    src_ids, src_len = src_vocab.encode_batch(src_text)
    tgt_ids, _ = tgt_vocab.encode_batch(tgt_text, bos=True, eos=True)   # all of length 12
    src_ids, src_len, tgt_ids = map(torch.tensor, (src_ids, src_len, tgt_ids))
    model = DateNet(len(src_vocab), len(tgt_vocab))
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    rng = np.random.default_rng(0)
    t0 = time.time()
    for step in range(args.steps):
        b = torch.tensor(rng.choice(len(src_ids), size=128))
        logits = model(src_ids[b], src_len[b], tgt_ids[b, :-1])
        loss = nn.functional.cross_entropy(logits.reshape(-1, len(tgt_vocab)),
                                           tgt_ids[b, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 0:
            print(f"step {step}: loss {loss.item():.4f} ({time.time() - t0:.1f} s)")
    model.eval()
    s2s = seq2seq_from_torch(model, source="src_emb", encoder="encoder", target="tgt_emb",
                             decoder="decoder", head="out", source_vocab=src_vocab,
                             target_vocab=tgt_vocab, bridge="concat")
    acc = score_dates(s2s)
    s2s.info = {"task": "rewrite a human-written date as an ISO date (YYYY-MM-DD)",
                "architecture": f"Embedding({len(src_vocab)}, 16) -> bidirectional GRU(16, "
                                f"{HIDDEN}) => GRU(16, {2 * HIDDEN}) -> "
                                f"Linear({2 * HIDDEN}, {len(tgt_vocab)})",
                "metric": "exact-match accuracy, greedy (1000 held-out dates, date_dataset "
                          "seed 2)",
                "accuracy": acc, "trained_by": "examples/train_date_format.py",
                "train_seconds": time.time() - t0}
    fastrnn.save(s2s, args.out)
    print(f"exact-match accuracy {acc:.4f}; 5 March 2021 -> {s2s.translate('5 March 2021')}; "
          f"wrote {args.out} ({os.path.getsize(args.out)} bytes)")


if __name__ == "__main__":
    main()
