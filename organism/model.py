"""A Llama-architecture causal LM with grouped-query attention, in PyTorch (1.13: no fused attention, so
attention is written out), and the Hugging Face folder format it is loaded from and saved to: config.json
and a single model.safetensors with the Hugging Face tensor names. RMSNorm, RoPE (rotate-half convention,
theta from the config), SwiGLU MLP, no biases, optionally tied input/output embeddings."""
import json
import math
import os
import struct

import torch
import torch.nn.functional as F
import torch.utils.checkpoint

SHAPE_KEYS = ['vocab_size', 'hidden_size', 'intermediate_size', 'num_hidden_layers', 'num_attention_heads',
              'num_key_value_heads', 'head_dim', 'rms_norm_eps', 'rope_theta', 'tie_word_embeddings']


def hf_config(shape):
    """config.json for a shape dict (the keys of SHAPE_KEYS), in the layout of the shipped v0 config."""
    return {
        'architectures': ['LlamaForCausalLM'], 'model_type': 'llama',
        'vocab_size': shape['vocab_size'], 'hidden_size': shape['hidden_size'],
        'intermediate_size': shape['intermediate_size'], 'num_hidden_layers': shape['num_hidden_layers'],
        'num_attention_heads': shape['num_attention_heads'], 'num_key_value_heads': shape['num_key_value_heads'],
        'head_dim': shape['head_dim'], 'hidden_act': 'silu', 'max_position_embeddings': 4096,
        'initializer_range': 0.02, 'rms_norm_eps': shape['rms_norm_eps'], 'rope_theta': shape['rope_theta'],
        'rope_scaling': None, 'attention_bias': False, 'attention_dropout': 0.0, 'mlp_bias': False,
        'pretraining_tp': 1, 'use_cache': True, 'tie_word_embeddings': shape['tie_word_embeddings'],
        'torch_dtype': 'bfloat16', 'transformers_version': '4.44.0',
        'bos_token_id': 2046, 'eos_token_id': 2047, 'pad_token_id': 2045,
    }


class RMSNorm(torch.nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope_tables(positions, head_dim, theta):
    """cos/sin of shape [..., T, head_dim] for integer positions [..., T] (Hugging Face's rotate-half layout:
    frequency i applies to dims i and i + head_dim/2)."""
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    ang = positions.to(torch.float64)[..., None] * inv
    ang = torch.cat([ang, ang], dim=-1)
    return ang.cos().to(torch.float32), ang.sin().to(torch.float32)


def apply_rope(x, cos, sin):
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


class Block(torch.nn.Module):
    def __init__(self, s):
        super().__init__()
        d, hd = s['hidden_size'], s['head_dim']
        self.nh, self.nkv, self.hd = s['num_attention_heads'], s['num_key_value_heads'], hd
        self.input_layernorm = RMSNorm(d, s['rms_norm_eps'])
        self.post_attention_layernorm = RMSNorm(d, s['rms_norm_eps'])
        self.q_proj = torch.nn.Linear(d, self.nh * hd, bias=False)
        self.k_proj = torch.nn.Linear(d, self.nkv * hd, bias=False)
        self.v_proj = torch.nn.Linear(d, self.nkv * hd, bias=False)
        self.o_proj = torch.nn.Linear(self.nh * hd, d, bias=False)
        self.gate_proj = torch.nn.Linear(d, s['intermediate_size'], bias=False)
        self.up_proj = torch.nn.Linear(d, s['intermediate_size'], bias=False)
        self.down_proj = torch.nn.Linear(s['intermediate_size'], d, bias=False)

    def forward(self, x, cos, sin, mask, spans=None):
        """`mask` [1 or B, 1, T, T] (True = may attend); or `spans`: per row the [start, end) of each packed
        example, which then attends causally within itself alone (positions outside every span, the padding,
        get no attention output). Spans cost sum(L^2) instead of T^2 per row and never widen k and v to the
        query heads."""
        B, T, _ = x.shape
        h = self.input_layernorm(x)
        q = self.q_proj(h).view(B, T, self.nh, self.hd).transpose(1, 2)
        k = self.k_proj(h).view(B, T, self.nkv, self.hd).transpose(1, 2)
        v = self.v_proj(h).view(B, T, self.nkv, self.hd).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        group = self.nh // self.nkv
        if spans is None:
            k = k.repeat_interleave(group, dim=1)
            v = v.repeat_interleave(group, dim=1)
            scores = (q @ k.transpose(-1, -2)) / math.sqrt(self.hd)
            scores = scores.masked_fill(~mask, float('-inf'))
            att = torch.softmax(scores, dim=-1)
            o = (att @ v).transpose(1, 2).reshape(B, T, self.nh * self.hd)
        else:
            rows = []
            for b in range(B):
                pieces, end = [], 0
                for s0, s1 in spans[b]:
                    if s0 > end:
                        pieces.append(q.new_zeros(self.nh, s0 - end, self.hd))
                    n = s1 - s0
                    qs = q[b, :, s0:s1].reshape(self.nkv, group, n, self.hd)
                    ks, vs = k[b, :, None, s0:s1], v[b, :, None, s0:s1]
                    pieces.append(_causal_attention(qs, ks, vs, self.hd).reshape(self.nh, n, self.hd))
                    end = s1
                if end < T:
                    pieces.append(q.new_zeros(self.nh, T - end, self.hd))
                rows.append(torch.cat(pieces, dim=1))
            o = torch.stack(rows).transpose(1, 2).reshape(B, T, self.nh * self.hd)
        x = x + self.o_proj(o)
        h = self.post_attention_layernorm(x)
        return x + self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))


CAUSAL_BLOCK = 256


def _causal_bias(n, m, offset, group):
    """The additive causal bias (-inf where key j > query offset + i, else 0) of n queries over m keys, repeated for
    `group` query heads stacked along the rows."""
    return torch.full((n, m), float('-inf')).triu(offset + 1).repeat(group, 1)


def _causal_attention(q, k, v, head_dim):
    """Causal softmax attention of q [nkv, group, n, hd] over k, v [nkv, 1, n, hd] (each KV head shared by its
    group of query heads, which go through one matrix product as group * n rows; the scale and the causal bias
    are folded into that product). Above CAUSAL_BLOCK queries it goes a block of queries at a time, each over the
    keys up to its block's end only: the same result for about half the work and memory of the n x n scores."""
    nkv, group, n, hd = q.shape
    k, v = k[:, 0], v[:, 0]
    out = []
    for a in range(0, n, CAUSAL_BLOCK):
        b = min(n, a + CAUSAL_BLOCK)
        qb = q[:, :, a:b].reshape(nkv, group * (b - a), hd)
        sc = torch.baddbmm(_causal_bias(b - a, b, a, group), qb, k[:, :b].transpose(-1, -2), alpha=1 / math.sqrt(head_dim))
        out.append((torch.softmax(sc, dim=-1) @ v[:, :b]).view(nkv, group, b - a, hd))
    return out[0] if len(out) == 1 else torch.cat(out, dim=-2)


def segment_spans(segments):
    """Per row of `segments` [B, T] (example ids, 0 for padding; each example contiguous), the [start, end)
    of each example."""
    out = []
    for row in segments.tolist():
        spans, start = [], 0
        for i in range(1, len(row) + 1):
            if i == len(row) or row[i] != row[start]:
                if row[start] != 0:
                    spans.append((start, i))
                start = i
        out.append(spans)
    return out


class Llama(torch.nn.Module):
    def __init__(self, shape):
        super().__init__()
        self.shape = dict(shape)
        s = self.shape
        if s['num_attention_heads'] % s['num_key_value_heads']:
            raise ValueError('num_attention_heads must be a multiple of num_key_value_heads')
        self.embed_tokens = torch.nn.Embedding(s['vocab_size'], s['hidden_size'])
        self.layers = torch.nn.ModuleList([Block(s) for _ in range(s['num_hidden_layers'])])
        self.norm = RMSNorm(s['hidden_size'], s['rms_norm_eps'])
        self.lm_head = None if s['tie_word_embeddings'] else torch.nn.Linear(s['hidden_size'], s['vocab_size'], bias=False)
        self.reset_parameters()

    def reset_parameters(self, std=0.02):
        """Normal(0, std) weights; the projections that write into the residual stream (o_proj, down_proj)
        scaled by 1/sqrt(2 * layers), as in GPT-2, so the residual stream's variance does not grow with depth."""
        n = self.shape['num_hidden_layers']
        for name, p in self.named_parameters():
            if p.dim() == 1:
                torch.nn.init.ones_(p)
            elif name.endswith('o_proj.weight') or name.endswith('down_proj.weight'):
                torch.nn.init.normal_(p, 0.0, std / math.sqrt(2 * n))
            else:
                torch.nn.init.normal_(p, 0.0, std)

    def forward(self, ids, positions=None, segments=None, checkpoint_layers=False, rows=None, by_span=False):
        """Logits [B, T, V] for ids [B, T]. `segments` [B, T] (optional) restricts attention to tokens of the
        same segment (several examples packed into one row); `positions` restart at 0 in each segment.
        `checkpoint_layers` recomputes each layer in the backward pass instead of keeping its attention
        matrices (T^2 per head), which long rows would otherwise need gigabytes for. `rows` (bool [B, T])
        returns logits [N, V] for the selected positions only (training needs them at targets alone; the
        output projection is a fifth of a small model's compute). `by_span` computes the attention of each
        packed example on its own (segment_spans; the same result as the segment mask, for less work)."""
        B, T = ids.shape
        if positions is None:
            positions = torch.arange(T).expand(B, T)
        spans = segment_spans(segments) if by_span and segments is not None else None
        mask = None
        if spans is None:
            mask = torch.ones(T, T, dtype=torch.bool).tril()[None, None]
            if segments is not None:
                mask = mask & (segments[:, None, :, None] == segments[:, None, None, :])
        cos, sin = rope_tables(positions, self.shape['head_dim'], self.shape['rope_theta'])
        cos, sin = cos[:, None], sin[:, None]
        x = self.embed_tokens(ids)
        for layer in self.layers:
            if checkpoint_layers and self.training:
                x = torch.utils.checkpoint.checkpoint(layer, x, cos, sin, mask, spans, use_reentrant=False)
            else:
                x = layer(x, cos, sin, mask, spans)
        x = self.norm(x if rows is None else x[rows])
        w = self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        return x @ w.t()

    def hf_state(self):
        """Tensors under their Hugging Face names."""
        out = {'model.embed_tokens.weight': self.embed_tokens.weight, 'model.norm.weight': self.norm.weight}
        if self.lm_head is not None:
            out['lm_head.weight'] = self.lm_head.weight
        for i, L in enumerate(self.layers):
            p = f'model.layers.{i}.'
            out[p + 'input_layernorm.weight'] = L.input_layernorm.weight
            out[p + 'post_attention_layernorm.weight'] = L.post_attention_layernorm.weight
            for n in ('q_proj', 'k_proj', 'v_proj', 'o_proj'):
                out[p + f'self_attn.{n}.weight'] = getattr(L, n).weight
            for n in ('gate_proj', 'up_proj', 'down_proj'):
                out[p + f'mlp.{n}.weight'] = getattr(L, n).weight
        return out

    def num_parameters(self):
        return sum(p.numel() for p in self.parameters())


# ---- safetensors (the format is an 8-byte header length, a JSON header, then raw little-endian data) ----

_DTYPES = {'BF16': torch.bfloat16, 'F32': torch.float32, 'F16': torch.float16}


def read_safetensors(path):
    with open(path, 'rb') as f:
        raw = f.read()
    (n,) = struct.unpack('<Q', raw[:8])
    header = json.loads(raw[8:8 + n])
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == '__metadata__':
            continue
        if info['dtype'] not in _DTYPES:
            raise ValueError(f'{path}: tensor {name} has dtype {info["dtype"]}, expected one of {sorted(_DTYPES)}')
        a, b = info['data_offsets']
        buf = bytearray(raw[base + a:base + b])
        out[name] = torch.frombuffer(buf, dtype=_DTYPES[info['dtype']]).reshape(info['shape']).clone()
    return out


def write_safetensors_bf16(path, tensors):
    """Writes every tensor as BF16 (round to nearest even), names sorted, atomically (temp file + rename)."""
    header, chunks, offset = {'__metadata__': {'format': 'pt'}}, [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().to(torch.float32).contiguous().to(torch.bfloat16)
        data = t.view(torch.int16).numpy().tobytes()
        header[name] = {'dtype': 'BF16', 'shape': list(t.shape), 'data_offsets': [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    hb = json.dumps(header, separators=(',', ':')).encode('utf-8')
    hb += b' ' * (-len(hb) % 8)
    tmp = path + '.tmp'
    with open(tmp, 'wb') as f:
        f.write(struct.pack('<Q', len(hb)))
        f.write(hb)
        for c in chunks:
            f.write(c)
    os.replace(tmp, path)


def shape_from_config(cfg):
    s = {k: cfg[k] for k in SHAPE_KEYS if k in cfg}
    s.setdefault('head_dim', cfg['hidden_size'] // cfg['num_attention_heads'])
    s.setdefault('tie_word_embeddings', False)
    return s


def load_hf(folder):
    """A Llama from a Hugging Face folder, weights upcast to fp32."""
    with open(os.path.join(folder, 'config.json')) as f:
        cfg = json.load(f)
    model = Llama(shape_from_config(cfg))
    tensors = read_safetensors(os.path.join(folder, 'model.safetensors'))
    own = model.hf_state()
    missing = sorted(set(own) - set(tensors))
    if missing:
        raise ValueError(f'{folder}/model.safetensors: missing tensor {missing[0]} ({len(missing)} missing)')
    with torch.no_grad():
        for name, p in own.items():
            t = tensors[name]
            if list(t.shape) != list(p.shape):
                raise ValueError(f'{folder}/model.safetensors: {name} has shape {list(t.shape)}, config implies {list(p.shape)}')
            p.copy_(t.to(torch.float32))
    return model
