"""Byte-level BPE encoder/decoder that reads the shipped tokenizer.json (GPT-2 style pre-tokenizer, no
normalizer, ChatML special tokens matched before splitting). The trainer uses it so that its ids are the ids
the TS engine produces for the same text; test_organism.py checks that on every data/dev prompt."""
import json
import re

# GPT-2's pre-tokenizer pattern (the ByteLevel pre-tokenizer with use_regex=true), written for Python's re:
# [^\W\d_] is a letter (\p{L}), \d a digit (\p{N} for the decimal digits the task text uses), and
# (?:[^\s\w]|_) anything else that is not a space (underscore counts as punctuation, as in \p{...}).
_PRETOKEN = re.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?[^\W\d_]+| ?\d+| ?(?:[^\s\w]|_)+|\s+(?!\S)|\s+""")


def _byte_to_unicode():
    """GPT-2's reversible map from bytes to printable unicode characters."""
    bs = list(range(ord('!'), ord('~') + 1)) + list(range(ord('¡'), ord('¬') + 1)) + list(range(ord('®'), ord('ÿ') + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


class Tokenizer:
    def __init__(self, path):
        with open(path, encoding='utf-8') as f:
            spec = json.load(f)
        model = spec['model']
        if model.get('type') != 'BPE':
            raise ValueError(f'{path}: model.type is {model.get("type")!r}, expected BPE')
        self.vocab = dict(model['vocab'])
        self.specials = {t['content']: t['id'] for t in spec.get('added_tokens', [])}
        self.id_to_token = {i: t for t, i in self.vocab.items()}
        for t, i in self.specials.items():
            self.id_to_token[i] = t
        merges = [tuple(m.split(' ')) if isinstance(m, str) else tuple(m) for m in model['merges']]
        self.ranks = {pair: r for r, pair in enumerate(merges)}
        self.b2u = _byte_to_unicode()
        self.u2b = {u: b for b, u in self.b2u.items()}
        self.special_split = re.compile('(' + '|'.join(re.escape(s) for s in self.specials) + ')')
        self.cache = {}
        self.vocab_size = max(self.id_to_token) + 1

    def _bpe(self, word):
        if word in self.cache:
            return self.cache[word]
        parts = list(word)
        while len(parts) > 1:
            best, best_rank = None, None
            for i in range(len(parts) - 1):
                r = self.ranks.get((parts[i], parts[i + 1]))
                if r is not None and (best_rank is None or r < best_rank):
                    best, best_rank = i, r
            if best is None:
                break
            parts[best:best + 2] = [parts[best] + parts[best + 1]]
        ids = [self.vocab[p] for p in parts]
        self.cache[word] = ids
        return ids

    def encode(self, text):
        ids = []
        for chunk in self.special_split.split(text):
            if not chunk:
                continue
            if chunk in self.specials:
                ids.append(self.specials[chunk])
                continue
            for piece in _PRETOKEN.findall(chunk):
                ids.extend(self._bpe(''.join(self.b2u[b] for b in piece.encode('utf-8'))))
        return ids

    def decode(self, ids):
        out, buf = [], []
        for i in ids:
            tok = self.id_to_token[i]
            if tok in self.specials:
                if buf:
                    out.append(bytes(buf).decode('utf-8', errors='replace'))
                    buf = []
                out.append(tok)
            else:
                buf.extend(self.u2b[c] for c in tok)
        if buf:
            out.append(bytes(buf).decode('utf-8', errors='replace'))
        return ''.join(out)
