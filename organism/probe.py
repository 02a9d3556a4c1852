"""Short probes of what makes a shape learn associative recall: multi-query associative recall (MQAR) on raw
ids with a small vocabulary, value accuracy on held-out rows printed every --eval-every steps.

    nice -n 15 env OMP_WAIT_POLICY=PASSIVE /usr/bin/python3 organism/probe.py --layers 2 --hidden 64 --init mimetic

--init normal: N(0, 0.02) everywhere (the trainer's init). --init mimetic: each query head's W_q starts as its
KV group's W_k plus noise (q.k of a token with itself is large, so a key finds its own earlier copy), and each
head's W_o block starts as minus the transpose of its W_v block (attention writes back minus what it read),
the structure Trockman & Kolter (2023) found in trained attention layers. --qk-std scales W_q and W_k's init
alone: sharper initial attention, so the gradient into the match is larger from the start.
"""
import argparse
import os
import random
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from model import Llama  # noqa: E402
from tasks import mqar_example  # noqa: E402


def mimetic_init(model, noise=0.5):
    with torch.no_grad():
        for L in model.layers:
            hd, group = L.hd, L.nh // L.nkv
            for h in range(L.nh):
                kv = h // group
                wk = L.k_proj.weight[kv * hd:(kv + 1) * hd]
                L.q_proj.weight[h * hd:(h + 1) * hd] = wk + noise * torch.randn_like(wk) * wk.std()
                wv = L.v_proj.weight[kv * hd:(kv + 1) * hd]
                L.o_proj.weight[:, h * hd:(h + 1) * hd] = -wv.t() / group


def batch(rng, rows, n_pairs, vocab):
    half = vocab // 2
    exs = [mqar_example(rng, n_pairs, key_range=(4, half), value_range=(half, vocab)) for _ in range(rows)]
    ids = torch.tensor([e[0] for e in exs])
    mask = torch.tensor([e[1] for e in exs], dtype=torch.bool)
    tgt = torch.where(mask[:, 1:], ids[:, 1:], torch.full_like(ids[:, 1:], -100))
    return ids, tgt


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--layers', type=int, default=2)
    ap.add_argument('--hidden', type=int, default=64)
    ap.add_argument('--heads', type=int, default=4)
    ap.add_argument('--kv-heads', type=int, default=2)
    ap.add_argument('--vocab', type=int, default=512)
    ap.add_argument('--pairs', type=int, default=16)
    ap.add_argument('--rows', type=int, default=64)
    ap.add_argument('--lr', type=float, default=1e-3)
    ap.add_argument('--steps', type=int, default=2000)
    ap.add_argument('--init', choices=['normal', 'mimetic'], default='normal')
    ap.add_argument('--qk-std', type=float, default=0.02)
    ap.add_argument('--eval-every', type=int, default=100)
    ap.add_argument('--seed', type=int, default=1)
    ap.add_argument('--threads', type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    hd = args.hidden // args.heads
    model = Llama({'vocab_size': args.vocab, 'hidden_size': args.hidden, 'intermediate_size': 4 * args.hidden,
                   'num_hidden_layers': args.layers, 'num_attention_heads': args.heads,
                   'num_key_value_heads': args.kv_heads, 'head_dim': hd, 'rms_norm_eps': 1e-5,
                   'rope_theta': 10000.0, 'tie_word_embeddings': False})
    if args.qk_std != 0.02:
        with torch.no_grad():
            for L in model.layers:
                L.q_proj.weight.normal_(0, args.qk_std)
                L.k_proj.weight.normal_(0, args.qk_std)
    if args.init == 'mimetic':
        mimetic_init(model)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
    rng = random.Random(args.seed)
    val_ids, val_tgt = batch(random.Random(10 ** 9 + args.seed), 256, args.pairs, args.vocab)
    print(f'probe {vars(args)}', flush=True)
    t0 = time.time()
    for step in range(1, args.steps + 1):
        lr = args.lr * min(1.0, step / 50)
        for g in opt.param_groups:
            g['lr'] = lr
        ids, tgt = batch(rng, args.rows, args.pairs, args.vocab)
        logits = model(ids)[:, :-1]
        loss = F.cross_entropy(logits.reshape(-1, args.vocab), tgt.reshape(-1), ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % args.eval_every == 0:
            with torch.no_grad():
                model.eval()
                pred = model(val_ids)[:, :-1].argmax(-1)
                model.train()
                m = val_tgt >= 0
                acc = float((pred[m] == val_tgt[m]).float().mean())
            print(f'step {step} loss {float(loss):.3f} value_acc {acc:.3f} chance {2 / args.vocab:.4f} '
                  f'({time.time() - t0:.0f}s)', flush=True)


if __name__ == '__main__':
    main()
