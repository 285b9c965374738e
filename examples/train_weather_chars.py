"""One-to-many: train a character-level GRU language model in PyTorch on weather-report lines
("Denver is sunny and 75 degrees."), convert it to fastrnn and ship it as
fastrnn/models/weather_chars.frnn.

Text: fastrnn.demo.weather_corpus (generated offline from a small grammar, seeded). A newline
ends each line and is the generator's stop symbol, so ``gen.generate("Denver")`` completes one
report. Runs in about a minute or less on 2 cores.

    python examples/train_weather_chars.py [--out fastrnn/models/weather_chars.frnn]
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
from converters.torch_composite import from_torch_composite  # noqa: E402
from fastrnn.demo import score_weather, score_weather_lines, weather_corpus  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


class CharNet(nn.Module):
    def __init__(self, vocab_size, dim=16, hidden=96):
        super().__init__()
        self.emb = nn.Embedding(vocab_size, dim)
        self.gru = nn.GRU(dim, hidden, batch_first=True)
        self.fc = nn.Linear(hidden, vocab_size)

    def forward(self, ids):                              # (N, T) -> (N, T, V) logits
        out, _ = self.gru(self.emb(ids))
        return self.fc(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default=os.path.join(HERE, "..", "fastrnn", "models",
                                                  "weather_chars.frnn"))
    ap.add_argument("--steps", type=int, default=400)
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)  # small model: one thread is fastest
    lines = weather_corpus(3000, seed=1)
    symbols = sorted(set("".join(lines)) | {"\n"})
    vocab = fastrnn.Vocabulary(symbols, eos="\n")
    # one long stream of lines, cut into windows of 48 characters
    stream = vocab.encode(list("\n" + "\n".join(lines) + "\n"))
    window = 48
    starts = np.arange(0, len(stream) - window - 1, window // 2)
    model = CharNet(len(vocab))
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    data = torch.tensor(stream)
    rng = np.random.default_rng(0)
    t0 = time.time()
    for step in range(args.steps):
        pick = rng.choice(starts, size=64)
        batch = torch.stack([data[s:s + window + 1] for s in pick])
        logits = model(batch[:, :-1])
        loss = nn.functional.cross_entropy(logits.reshape(-1, len(vocab)),
                                           batch[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 0:
            print(f"step {step}: loss {loss.item():.4f} ({time.time() - t0:.1f} s)")
    model.eval()
    gen = from_torch_composite(model, embedding="emb", rnn="gru", head="fc", task="generator",
                               vocab=vocab)
    acc = score_weather(gen)
    valid = score_weather_lines(gen)
    gen.info = {"task": "complete a weather report from a city name (character level)",
                "architecture": f"Embedding({len(vocab)}, 16) -> GRU(16, 96) -> "
                                f"Linear(96, {len(vocab)})",
                "metric": "next-character accuracy (200 held-out lines, weather_corpus seed 2)",
                "accuracy": acc,
                "valid_lines": valid,
                "valid_lines_metric": "share of 100 sampled lines (temperature 0.8) that are "
                                      "valid reports",
                "trained_by": "examples/train_weather_chars.py",
                "train_seconds": time.time() - t0}
    fastrnn.save(gen, args.out)
    print(f"next-char accuracy {acc:.4f}, valid sampled lines {valid:.2f}; "
          f"sample: Denver{gen.generate('Denver', 60, temperature=0.8, seed=0)!r}; "
          f"wrote {args.out} ({os.path.getsize(args.out)} bytes)")


if __name__ == "__main__":
    main()
