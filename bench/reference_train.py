#!/usr/bin/python3
"""PyTorch (Python API) reference for `braid bench train`.

The same GPT as braid's train/gpt_model.cpp -- pre-LayerNorm blocks, causal
self-attention, exact GELU MLP, tied embeddings, nanoGPT's initialisation --
trained with the same batch, context, AdamW hyper-parameters (weight decay on
matrices and embeddings only), global-norm clipping and warm-up + cosine
schedule. It is written the way nanoGPT writes it (nn.Module, nn.Linear,
torch.optim.AdamW, clip_grad_norm_), i.e. idiomatic PyTorch as a user would
write it, on the same LibTorch (Debian's python3-torch 1.13) with the same
threads: --threads sets LibTorch's intra-op (OpenMP) threads, and `braid bench
train` sets OPENBLAS_NUM_THREADS to the BLAS threads braid uses.

Run with Debian's interpreter, which has torch: /usr/bin/python3.
Prints one JSON object on the last line of stdout.
"""
import argparse
import json
import math
import os
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class CausalSelfAttention(nn.Module):
    def __init__(self, width, heads, context):
        super().__init__()
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.heads = heads
        self.register_buffer("mask", torch.tril(torch.ones(context, context)).view(1, 1, context, context))

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.qkv(x).split(C, dim=2)
        k = k.view(B, T, self.heads, C // self.heads).transpose(1, 2)
        q = q.view(B, T, self.heads, C // self.heads).transpose(1, 2)
        v = v.view(B, T, self.heads, C // self.heads).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
        att = att.masked_fill(self.mask[:, :, :T, :T] == 0, float("-inf"))
        att = F.softmax(att, dim=-1)
        y = att @ v
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.proj(y)


class Block(nn.Module):
    def __init__(self, width, heads, context, mlp_ratio):
        super().__init__()
        self.ln1 = nn.LayerNorm(width)
        self.attn = CausalSelfAttention(width, heads, context)
        self.ln2 = nn.LayerNorm(width)
        self.fc = nn.Linear(width, mlp_ratio * width)
        self.mlp_proj = nn.Linear(mlp_ratio * width, width)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.mlp_proj(F.gelu(self.fc(self.ln2(x))))


class GPT(nn.Module):
    def __init__(self, vocab, context, layers, width, heads, mlp_ratio, init_std):
        super().__init__()
        self.wte = nn.Embedding(vocab, width)
        self.wpe = nn.Embedding(context, width)
        self.blocks = nn.ModuleList([Block(width, heads, context, mlp_ratio) for _ in range(layers)])
        self.lnf = nn.LayerNorm(width)
        self.lm_head = nn.Linear(width, vocab, bias=False)
        self.lm_head.weight = self.wte.weight  # tied
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(p, 0.0, init_std / math.sqrt(2 * layers))
            elif p.dim() == 2:
                nn.init.normal_(p, 0.0, init_std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, idx, targets):
        B, T = idx.size()
        pos = torch.arange(0, T, dtype=torch.long)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.lnf(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))


def lr_at(step, total, warmup, lr, min_lr):
    if step < warmup:
        return lr * (step + 1) / (warmup + 1)
    if step >= total:
        return min_lr
    progress = (step - warmup) / max(1, total - warmup)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr - min_lr)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="file of training tokens (bytes, or uint16 with --uint16)")
    ap.add_argument("--uint16", action="store_true")
    ap.add_argument("--vocab", type=int, default=256)
    ap.add_argument("--context", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--mlp-ratio", type=int, default=4)
    ap.add_argument("--init-std", type=float, default=0.02)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--accum", type=int, default=1)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--min-lr", type=float, default=1e-4)
    ap.add_argument("--warmup-steps", type=int, default=50)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--beta1", type=float, default=0.9)
    ap.add_argument("--beta2", type=float, default=0.95)
    ap.add_argument("--eps", type=float, default=1e-8)
    ap.add_argument("--grad-clip", type=float, default=1.0)
    ap.add_argument("--steps", type=int, default=30, help="measured steps")
    ap.add_argument("--warmup", type=int, default=5, help="unmeasured steps first")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads (torch.set_num_threads)")
    ap.add_argument("--seed", type=int, default=1337)
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    raw = open(a.data, "rb").read()
    if a.uint16:
        data = torch.frombuffer(bytearray(raw), dtype=torch.int16).to(torch.long) & 0xFFFF
    else:
        data = torch.frombuffer(bytearray(raw), dtype=torch.uint8).to(torch.long)
    if data.numel() <= a.context + 1:
        sys.exit(f"reference_train.py: {a.data} is shorter than one context window")

    model = GPT(a.vocab, a.context, a.layers, a.width, a.heads, a.mlp_ratio, a.init_std)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": a.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=a.lr, betas=(a.beta1, a.beta2), eps=a.eps)

    total = a.warmup + a.steps
    offsets = torch.arange(a.context + 1)
    tokens_per_step = a.batch * a.accum * a.context
    measured_time = 0.0
    min_step = float("inf")
    losses = []
    for step in range(total):
        if step == a.warmup:
            cpu0 = time.process_time()
        t0 = time.perf_counter()
        for group in opt.param_groups:
            group["lr"] = lr_at(step, total, a.warmup_steps, a.lr, a.min_lr)
        opt.zero_grad(set_to_none=True)
        for _ in range(a.accum):
            starts = torch.randint(0, data.numel() - a.context, (a.batch,))
            windows = data[starts.unsqueeze(1) + offsets]
            x, y = windows[:, :-1], windows[:, 1:]
            loss = model(x, y) / a.accum
            loss.backward()
        if a.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), a.grad_clip)
        opt.step()
        losses.append(loss.item() * a.accum)
        dt = time.perf_counter() - t0
        if step >= a.warmup:
            measured_time += dt
            min_step = min(min_step, dt)

    params = sum(p.numel() for p in model.parameters())
    print(json.dumps({
        "impl": "pytorch-python",
        "torch": torch.__version__,
        "threads": a.threads,
        "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS", "default"),
        "parameters": params,
        "steps": a.steps,
        "tokens_per_step": tokens_per_step,
        "tokens_per_s": tokens_per_step * a.steps / measured_time,
        "step_s": measured_time / a.steps, "min_step_s": min_step,
        "cpu_s_per_step": (time.process_time() - cpu0) / a.steps,
        "first_loss": losses[0],
        "last_loss": losses[-1],
    }))


if __name__ == "__main__":
    main()
