#!/usr/bin/env python3
"""torch_gpt.py -- the same GPT training step as strata's zoo `gpt`, in PyTorch
eager, for comparing step times on one GPU.

The model follows ir/zoo.c's decoder: token and learned position embeddings,
pre-LN blocks x + attn(ln1(x)), x + mlp(ln2(x)) with biases on q, k, v, the
projection and both MLP layers, GeLU (tanh form), a final LN and a head tied
to the token embedding, cross-entropy over the vocabulary, Adam (lr 1e-3,
0.9, 0.999, 1e-8). fp32 throughout with TF32 off, as strata computes.

Prints one line: "torch: median step X ms over N steps (...)".
"""
import argparse
import math
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, h, heads, f):
        super().__init__()
        self.ln1 = nn.LayerNorm(h)
        self.qkv = nn.Linear(h, 3 * h)
        self.proj = nn.Linear(h, h)
        self.ln2 = nn.LayerNorm(h)
        self.fc1 = nn.Linear(h, f)
        self.fc2 = nn.Linear(f, h)
        self.heads = heads

    def forward(self, x):
        b, s, h = x.shape
        n, d = self.heads, h // self.heads
        q, k, v = self.qkv(self.ln1(x)).split(h, dim=2)
        q = q.view(b, s, n, d).transpose(1, 2)
        k = k.view(b, s, n, d).transpose(1, 2)
        v = v.view(b, s, n, d).transpose(1, 2)
        # explicit scores and softmax, as strata computes attention (no fused kernel)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(d))
        mask = torch.ones(s, s, dtype=torch.bool, device=x.device).triu(1)
        att = att.masked_fill(mask, float("-inf")).softmax(dim=-1)
        y = (att @ v).transpose(1, 2).reshape(b, s, h)
        x = x + self.proj(y)
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(self, layers, h, heads, seq, vocab):
        super().__init__()
        self.wte = nn.Embedding(vocab, h)
        self.wpe = nn.Parameter(torch.zeros(seq, h))
        self.blocks = nn.ModuleList(Block(h, heads, 4 * h) for _ in range(layers))
        self.ln_f = nn.LayerNorm(h)

    def forward(self, tokens, labels):
        x = self.wte(tokens) + self.wpe
        for blk in self.blocks:
            x = blk(x)
        logits = self.ln_f(x) @ self.wte.weight.t()
        return F.cross_entropy(logits.view(-1, logits.size(-1)), labels.view(-1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--vocab", type=int, default=50304)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=10)
    a = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    dev = torch.device("cuda")
    torch.manual_seed(1)
    model = GPT(a.layers, a.hidden, a.heads, a.seq, a.vocab).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8)
    times = []
    for step in range(a.steps + 2):
        tokens = torch.randint(0, a.vocab, (a.batch, a.seq), device=dev)
        labels = torch.randint(0, a.vocab, (a.batch, a.seq), device=dev)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = model(tokens, labels)
        loss.backward()
        opt.step()
        torch.cuda.synchronize()
        if step >= 2:                       # two warm-up steps
            times.append(time.perf_counter() - t0)
    params = sum(p.numel() for p in model.parameters())
    print("torch: median step %.2f ms over %d steps (%s, torch %s, %.1f M params, loss %.4f)"
          % (statistics.median(times) * 1e3, len(times), torch.cuda.get_device_name(),
             torch.__version__, params / 1e6, loss.item()))


if __name__ == "__main__":
    main()
