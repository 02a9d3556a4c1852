"""Resumable trainer for kvlab-tiny-chat.

    nice -n 15 env OMP_WAIT_POLICY=PASSIVE python3 organism/train.py --run organism/runs/main [--steps N] ...

The run folder holds args.json (the recipe, fixed at the first start), ckpt.pt (model, optimizer, step;
written atomically every --ckpt-every steps and at the end) and log.jsonl (one line per logged step and per
validation). Starting again with the same --run resumes from ckpt.pt with the recorded recipe; --steps may
be raised to extend a run. The training stream is a function of (seed, step) only, so a resumed run sees the
rows an uninterrupted one would have seen.

Each step packs examples into rows of the stage's row length, --batch-tokens tokens in all; examples in one row do not attend to each
other and their positions restart at 0 (as at inference, where a prompt starts at position 0). The loss is
cross-entropy on the target tokens of each example only (answers and <|im_end|>; queried values for mqar).

Validation (every --eval-every steps) runs a fixed set of examples per family at full dev length and prints
per family the target-token accuracy and the exact rate: the fraction of examples whose every target token
is the argmax under teacher forcing, which is the same as greedy decoding reproducing the answer exactly.
"""
import argparse
import json
import math
import os
import random
import socket
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bpe import Tokenizer  # noqa: E402
from curriculum import CURRICULA, spaced_answers_at, stage_at  # noqa: E402
from model import Llama  # noqa: E402
from tasks import family_example  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_TOKENIZER = os.path.join(HERE, '..', 'models', 'kvlab-tiny-chat', 'tokenizer.json')
VAL_FAMILIES = ['mqar', 'recall', 'repeat', 'qa', 'instructions', 'leakage', 'copy', 'mqar2', 'qa_multi', 'say_turns']


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--run', required=True, help='run folder (created; resumed when it holds ckpt.pt)')
    ap.add_argument('--steps', type=int, default=20000, help='total optimizer steps')
    ap.add_argument('--curriculum', default='main', choices=sorted(CURRICULA))
    ap.add_argument('--layers', type=int, default=6)
    ap.add_argument('--hidden', type=int, default=256)
    ap.add_argument('--heads', type=int, default=4)
    ap.add_argument('--kv-heads', type=int, default=2)
    ap.add_argument('--head-dim', type=int, default=64)
    ap.add_argument('--ffn', type=int, default=768)
    ap.add_argument('--untied', action='store_true', help='separate lm_head instead of tied embeddings')
    ap.add_argument('--lr', type=float, default=1e-3)
    ap.add_argument('--min-lr-frac', type=float, default=0.1, help='cosine decay floor as a fraction of --lr')
    ap.add_argument('--warmup', type=int, default=200)
    ap.add_argument('--weight-decay', type=float, default=0.1)
    ap.add_argument('--batch-tokens', type=int, default=4096,
                    help='tokens per step: rows of the stage\'s row length (curriculum.py) filling this many tokens')
    ap.add_argument('--seed', type=int, default=1)
    ap.add_argument('--threads', type=int, default=1, help='torch threads per worker')
    ap.add_argument('--workers', type=int, default=1,
                    help='data-parallel processes: each takes a share of a step\'s rows and the gradients are summed '
                         '(the same update as one process; use one per core: a second thread per process does not help)')
    ap.add_argument('--log-every', type=int, default=10)
    ap.add_argument('--eval-every', type=int, default=250)
    ap.add_argument('--eval-examples', type=int, default=16)
    ap.add_argument('--val-families', default=','.join(VAL_FAMILIES), help='families to validate (comma-separated)')
    ap.add_argument('--ckpt-every', type=int, default=100)
    ap.add_argument('--tokenizer', default=DEFAULT_TOKENIZER)
    ap.add_argument('--checkpoint-above', type=int, default=4096,
                    help='rows longer than this recompute each layer in the backward pass (saves memory, costs a forward)')
    ap.add_argument('--validate-only', action='store_true', help='validate the run\'s checkpoint and exit (does not write)')
    return ap.parse_args(argv)


RECIPE_KEYS = ['curriculum', 'layers', 'hidden', 'heads', 'kv_heads', 'head_dim', 'ffn', 'untied', 'lr', 'min_lr_frac',
               'warmup', 'weight_decay', 'batch_tokens', 'seed']


def model_shape(r, vocab):
    return {'vocab_size': vocab, 'hidden_size': r['hidden'], 'intermediate_size': r['ffn'],
            'num_hidden_layers': r['layers'], 'num_attention_heads': r['heads'], 'num_key_value_heads': r['kv_heads'],
            'head_dim': r['head_dim'], 'rms_norm_eps': 1e-5, 'rope_theta': 10000.0, 'tie_word_embeddings': not r['untied']}


def load_run(run):
    """(recipe, tokenizer, model with the run's checkpoint loaded, checkpoint dict) of a run folder."""
    with open(os.path.join(run, 'args.json')) as f:
        recipe = json.load(f)
    tok = Tokenizer(DEFAULT_TOKENIZER)
    model = Llama(model_shape(recipe, tok.vocab_size))
    ck = torch.load(os.path.join(run, 'ckpt.pt'))
    model.load_state_dict(ck['model'])
    return recipe, tok, model, ck


def analysis_args(doc, **options):
    """The command line of an analysis script (--run plus `options`: name -> (type, default, help)), with torch on one
    thread: (args, recipe, tokenizer, model in eval mode, checkpoint dict)."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--run', required=True, help='run folder (args.json and ckpt.pt)')
    for name, (kind, default, help_text) in options.items():
        ap.add_argument('--' + name.replace('_', '-'), type=kind, default=default, help=help_text)
    args = ap.parse_args()
    torch.set_num_threads(1)
    recipe, tok, model, ck = load_run(args.run)
    model.eval()
    return args, recipe, tok, model, ck


def pack(examples, rows, seq_len, pad_id):
    """Greedy first-fit packing of (ids, mask) examples into [rows, seq_len] tensors: ids, targets (-100 where
    no loss), positions (restarting per example) and segment ids (distinct per example, 0 for padding).
    Examples that do not fit any row are dropped; the count is returned."""
    ids = torch.full((rows, seq_len), pad_id, dtype=torch.long)
    tgt = torch.full((rows, seq_len), -100, dtype=torch.long)
    pos = torch.zeros((rows, seq_len), dtype=torch.long)
    seg = torch.zeros((rows, seq_len), dtype=torch.long)
    fill = [0] * rows
    dropped, next_seg = 0, 1
    for e_ids, e_mask in examples:
        n = len(e_ids)
        r = next((i for i in range(rows) if fill[i] + n <= seq_len), None)
        if r is None:
            dropped += 1
            continue
        a = fill[r]
        ids[r, a:a + n] = torch.tensor(e_ids)
        t = [e_ids[i + 1] if e_mask[i + 1] else -100 for i in range(n - 1)] + [-100]
        tgt[r, a:a + n] = torch.tensor(t)
        pos[r, a:a + n] = torch.arange(n)
        seg[r, a:a + n] = next_seg
        next_seg += 1
        fill[r] += n
    return ids, tgt, pos, seg, dropped


def step_examples(recipe, step, tok):
    """The examples of one step: drawn from the curriculum stage's family mix until they fill the batch."""
    stage = stage_at(CURRICULA[recipe['curriculum']], step)
    seq_len = stage['seq_len']
    rows = max(1, recipe['batch_tokens'] // seq_len)
    rng = random.Random(recipe['seed'] * 1_000_003 + step)
    families, weights = zip(*stage['mix'].items())
    budget = rows * seq_len
    out, used = [], 0
    while used < budget * 0.92:
        fam = rng.choices(families, weights)[0]
        for ex in family_example(fam, rng, tok, stage['scale'], stage.get('spaced_answers', False)):
            if len(ex[0]) <= seq_len:
                out.append(ex)
                used += len(ex[0])
    return out, rows, seq_len, stage


def lr_at(recipe, step, total):
    if step < recipe['warmup']:
        return recipe['lr'] * (step + 1) / recipe['warmup']
    frac = min(1.0, (step - recipe['warmup']) / max(1, total - recipe['warmup']))
    lo = recipe['lr'] * recipe['min_lr_frac']
    return lo + (recipe['lr'] - lo) * 0.5 * (1 + math.cos(math.pi * frac))


def validation_set(recipe, tok, n, families=VAL_FAMILIES, spaced_answers=False):
    """Fixed examples per family at full dev length, from a seed no training step uses; answers in the form the
    stage trains (`spaced_answers`)."""
    out = {}
    for fam in families:
        rng = random.Random(recipe['seed'] * 7_919 + 999_999_937 + VAL_FAMILIES.index(fam))
        exs = []
        while len(exs) < n:
            exs.extend(family_example(fam, rng, tok, 1.0, spaced_answers)[:1])
        out[fam] = exs
    return out


def target_hits(model, ids, mask):
    """Per target token of one example (in order), whether it is the teacher-forced argmax."""
    pred = model(torch.tensor([ids]))[0][:-1].argmax(-1)
    return (pred == torch.tensor(ids[1:]))[torch.tensor(mask[1:], dtype=torch.bool)]


@torch.no_grad()
def validate(model, val):
    model.eval()
    res = {}
    for fam, exs in val.items():
        correct = total = exact = 0
        for e_ids, e_mask in exs:
            ok = target_hits(model, e_ids, e_mask)
            correct += int(ok.sum())
            total += len(ok)
            exact += int(bool(ok.all()))
        res[fam] = {'token_acc': round(correct / max(1, total), 4), 'exact': round(exact / len(exs), 4)}
    model.train()
    return res


def save_atomic(obj, path):
    tmp = path + '.tmp'
    torch.save(obj, tmp)
    os.replace(tmp, path)


def make_optimizer(model, recipe):
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    return torch.optim.AdamW([{'params': decay, 'weight_decay': recipe['weight_decay']},
                              {'params': no_decay, 'weight_decay': 0.0}], lr=recipe['lr'], betas=(0.9, 0.95), eps=1e-8)


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def main(argv=None):
    args = parse_args(argv)
    os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')
    if args.workers < 1:
        raise SystemExit('--workers must be at least 1')
    if args.workers == 1 or args.validate_only:
        train(0, 1, args, None)
    else:
        torch.multiprocessing.spawn(train, args=(args.workers, args, free_port()), nprocs=args.workers)


def reduce_sum(t, world):
    if world > 1:
        dist.all_reduce(t)
    return t


def step_gradients(model, ids, tgt, pos, seg, rank, world, checkpoint):
    """Backward of the mean cross-entropy over the step's target tokens, this worker taking rows rank::world;
    the gradients are summed over the workers, so every worker holds the whole step's gradients. Returns the
    step's mean loss."""
    mine = slice(rank, None, world)
    ids, tgt, pos, seg = ids[mine], tgt[mine], pos[mine], seg[mine]
    is_target = tgt >= 0
    total = reduce_sum(torch.tensor([float(is_target.sum())]), world)
    logits = model(ids, pos, seg, checkpoint_layers=checkpoint, rows=is_target, by_span=True)
    loss = F.cross_entropy(logits, tgt[is_target], reduction='sum') / total.clamp(min=1)
    loss.backward()
    if world > 1:
        params = list(model.parameters())
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in params])
        dist.all_reduce(flat)
        at = 0
        for p in params:
            n = p.numel()
            p.grad = flat[at:at + n].view_as(p).clone()
            at += n
    return float(reduce_sum(loss.detach().reshape(1), world))


def train(rank, world, args, port):
    torch.set_num_threads(args.threads)
    if world > 1:
        dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}', rank=rank, world_size=world)
    lead = rank == 0
    ckpt_path = os.path.join(args.run, 'ckpt.pt')
    if args.validate_only and not os.path.exists(ckpt_path):
        raise SystemExit(f'{ckpt_path}: no checkpoint to validate')
    os.makedirs(args.run, exist_ok=True)
    args_path = os.path.join(args.run, 'args.json')
    tok = Tokenizer(args.tokenizer)
    if lead and not os.path.exists(args_path):
        with open(args_path + '.tmp', 'w') as f:
            json.dump({k: getattr(args, k) for k in RECIPE_KEYS}, f, indent=1)
        os.replace(args_path + '.tmp', args_path)
    if world > 1:
        dist.barrier()
    with open(args_path) as f:
        recipe = json.load(f)
    torch.manual_seed(recipe['seed'])
    model = Llama(model_shape(recipe, tok.vocab_size))
    opt = make_optimizer(model, recipe)
    step, tokens_seen, target_tokens = 0, 0, 0
    if os.path.exists(ckpt_path):
        ck = torch.load(ckpt_path)
        model.load_state_dict(ck['model'])
        opt.load_state_dict(ck['optimizer'])
        step, tokens_seen, target_tokens = ck['step'], ck['tokens_seen'], ck['target_tokens']
        if lead:
            print(f'resumed {ckpt_path} at step {step} ({tokens_seen} tokens seen)', flush=True)
    if lead:
        print(f'model: {model.num_parameters() / 1e6:.2f}M parameters, recipe {json.dumps(recipe)}, '
              f'{world} worker(s)', flush=True)
    families = [f for f in args.val_families.split(',') if f]
    unknown = [f for f in families if f not in VAL_FAMILIES]
    if unknown:
        raise SystemExit(f'--val-families: unknown family {unknown[0]!r} (known: {", ".join(VAL_FAMILIES)})')
    val_sets = {}

    def val_at(at_step):
        spaced = spaced_answers_at(CURRICULA[recipe['curriculum']], at_step)
        if spaced not in val_sets:
            val_sets[spaced] = validation_set(recipe, tok, args.eval_examples, families, spaced)
        return val_sets[spaced]

    def checkpoint():
        save_atomic({'model': model.state_dict(), 'optimizer': opt.state_dict(), 'step': step,
                     'tokens_seen': tokens_seen, 'target_tokens': target_tokens,
                     'shape': model.shape, 'recipe': recipe}, ckpt_path)

    def run_validation():
        t0 = time.time()
        res = validate(model, val_at(step - 1))
        line = ' '.join(f'{f} {r["token_acc"]:.3f}/{r["exact"]:.2f}' for f, r in res.items())
        print(f'[val step {step}] token_acc/exact: {line} ({time.time() - t0:.0f}s)', flush=True)
        log.write(json.dumps({'step': step, 'tokens_seen': tokens_seen, 'val': res}) + '\n')
        log.flush()

    if args.validate_only:
        res = validate(model, val_at(max(0, step - 1)))
        print(f'[val step {step}] token_acc/exact: ' + ' '.join(f'{f} {r["token_acc"]:.3f}/{r["exact"]:.2f}' for f, r in res.items()))
        return
    log = open(os.path.join(args.run, 'log.jsonl'), 'a') if lead else None
    model.train()
    window_loss, window_n, t_window, tok_window = 0.0, 0, time.time(), 0
    while step < args.steps:
        exs, rows, seq_len, stage = step_examples(recipe, step, tok)
        ids, tgt, pos, seg, _ = pack(exs, rows, seq_len, tok.specials['<|endoftext|>'])
        for g in opt.param_groups:
            g['lr'] = lr_at(recipe, step, args.steps)
        opt.zero_grad(set_to_none=True)
        loss = step_gradients(model, ids, tgt, pos, seg, rank, world, seq_len > args.checkpoint_above)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        n_real = int((seg > 0).sum())
        tokens_seen += n_real
        target_tokens += int((tgt >= 0).sum())
        tok_window += n_real
        window_loss += loss
        window_n += 1
        if step % args.log_every == 0 and lead:
            dt = time.time() - t_window
            rec = {'step': step, 'stage': stage['name'], 'loss': round(window_loss / window_n, 4),
                   'lr': round(lr_at(recipe, step - 1, args.steps), 6), 'tokens_seen': tokens_seen,
                   'target_tokens': target_tokens, 'tok_per_s': round(tok_window / dt, 1)}
            print(' '.join(f'{k} {v}' for k, v in rec.items()), flush=True)
            log.write(json.dumps(rec) + '\n')
            log.flush()
            window_loss, window_n, t_window, tok_window = 0.0, 0, time.time(), 0
        if step % args.ckpt_every == 0 and lead:
            checkpoint()
        if step % args.eval_every == 0 and lead:
            run_validation()
    if lead:
        checkpoint()
        if step % args.eval_every:
            run_validation()
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()


if __name__ == '__main__':
    main()
